"""The REST API's long-polls on a run: `GET /api/v1/runs/<id>/?wait=S&until=...` answers once
the run is in one of `until` (or, without it, once its status changes), and
`GET /api/v1/runs/<id>/logs/?offset=N&wait=S` once there is log past N, the run has ended or
(`&until=...`) is in one of `until`;
either after S seconds (at most 60) at the latest.

Served asynchronously, like the agents' claim long-poll (tasks_app/dispatch/claim.py): the DRF view
(authentication, permissions, validation, rendering) runs in a thread for each check, and
between checks the request awaits the run's events holding no thread and no database
connection (it is handed back to the pool after each check). A check runs at the start and
after each event of the run: a status change (tasks_app.services.runs.run_transition) or a
log append (tasks_app.events), published through Redis pub/sub after commit. The
subscription is made before the first check, so an event between that check and the wait
is not lost. Without Redis (unreachable at subscribe or during the wait) the check runs about
once a second instead: Redis costs speed, never correctness (iacplatform/wakeups.py).

Every long-poll of a process subscribes on one shared Redis connection (`_RunEventHub`), and
the polls that wait are capped: IAC_LONGPOLL_MAX_PER_USER per user and
IAC_LONGPOLL_MAX_PER_PROCESS in all, in each web process; past either the poll answers 429
with Retry-After (after its first check, which authenticates the caller: a caller who may
not read the run gets its 401/403/404 as before, and a run already there answers at once,
counted nowhere). The agents' claim long-poll (tasks_app/dispatch/claim.py) is not a user long-poll
and is not counted."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse

from iacplatform import wakeups

# Without Redis, the run is checked this often while a long-poll waits.
DB_POLL_SECONDS = 1.0


class _Failed:
    """Put in a waiter's queue when the shared subscription broke: wait without Redis."""


FAILED = _Failed()


class _RunEventHub:
    """Every user long-poll of a process (of its event loop) shares one Redis connection:
    each subscribes its run's channel on it (counted: the second waiter on a run sends
    nothing) and gets the run's messages through a queue of its own, filled by one reader
    task, so a thousand waiting polls are one connection, not a thousand. When the
    connection fails, every waiter is told (FAILED, it then checks the run about once a
    second) and the next poll opens a new one."""

    def __init__(self) -> None:
        self.client: Any = None
        self.pubsub: Any = None
        self.reader: asyncio.Task | None = None
        self.waiters: dict[str, set[asyncio.Queue]] = {}
        self.lock = asyncio.Lock()  # subscribe and unsubscribe in order, on one connection

    async def subscribe(self, channel: str) -> asyncio.Queue:
        """A queue that gets the channel's messages (and FAILED); raises REDIS_ERRORS."""
        queue: asyncio.Queue = asyncio.Queue()
        async with self.lock:
            if self.pubsub is None:
                self.client = wakeups.async_client()
                self.pubsub = self.client.pubsub()
            if channel not in self.waiters:
                try:
                    await self.pubsub.subscribe(channel)
                except BaseException:
                    await self._fail()
                    raise
                self.waiters[channel] = set()
            self.waiters[channel].add(queue)
            if self.reader is None or self.reader.done():
                self.reader = asyncio.ensure_future(self._read(self.pubsub))
        return queue

    async def unsubscribe(self, channel: str, queue: asyncio.Queue) -> None:
        async with self.lock:
            queues = self.waiters.get(channel)
            if queues is None or queue not in queues:
                return  # the subscription failed meanwhile: nothing is left of it
            queues.discard(queue)
            if queues:
                return
            del self.waiters[channel]
            try:
                await self.pubsub.unsubscribe(channel)
            except wakeups.REDIS_ERRORS as exc:
                wakeups.redis_failed(exc, "a run long-poll's unsubscription")
                await self._fail()

    async def _read(self, pubsub: Any) -> None:
        try:
            while pubsub is self.pubsub:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=DB_POLL_SECONDS)
                if message and message.get("type") == "message":
                    channel = message.get("channel")
                    if isinstance(channel, bytes):
                        channel = channel.decode(errors="replace")
                    for queue in self.waiters.get(channel, ()):
                        queue.put_nowait(message.get("data"))
                if not wakeups.redis_available():
                    # Another call found Redis gone (a hung server sends no error to a reader).
                    raise wakeups.RedisUnavailable("Redis failed elsewhere in this process during run long-polls")
        except Exception as exc:  # noqa: BLE001  whatever broke the reader, the waiters fall back
            if pubsub is self.pubsub:  # not a connection dropped meanwhile
                wakeups.redis_failed(exc, "the run long-polls' subscription")
                async with self.lock:
                    if pubsub is self.pubsub:
                        await self._fail()

    async def _fail(self) -> None:
        """Drop the connection and tell every waiter (called holding the lock)."""
        waiters, self.waiters = self.waiters, {}
        for queues in waiters.values():
            for queue in queues:
                queue.put_nowait(FAILED)
        pubsub, client, self.pubsub, self.client, self.reader = self.pubsub, self.client, None, None, None
        try:
            if pubsub is not None:
                await pubsub.aclose()
            if client is not None:
                await client.aclose()
        except wakeups.REDIS_ERRORS:  # closing a connection to a dead server
            pass


# One hub per event loop: an asyncio connection belongs to its loop (a web process has one).
_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _RunEventHub] = weakref.WeakKeyDictionary()


def _hub() -> _RunEventHub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = _RunEventHub()
    return hub


class RunEvents:
    """The run's event channel, subscribed (best effort) for the lifetime of `async with`, on
    the process's shared connection. `kinds`: the events that can change the caller's answer
    ("status", "log"); others are skipped without a check (a run's detail does not change
    when its log grows)."""

    def __init__(self, task_id: int, kinds: frozenset[str] = frozenset({"status", "log"})) -> None:
        self.task_id = task_id
        self.kinds = kinds
        self.channel = wakeups.run_channel(task_id)
        self.queue: asyncio.Queue | None = None  # None: no subscription, poll the database
        self._hub: _RunEventHub | None = None

    @property
    def subscribed(self) -> bool:
        return self.queue is not None

    async def __aenter__(self) -> RunEvents:
        if wakeups.redis_available():
            hub = _hub()
            try:
                self.queue = await hub.subscribe(self.channel)
                self._hub = hub
                wakeups.redis_ok()
            except wakeups.REDIS_ERRORS as exc:
                wakeups.redis_failed(exc, "a run long-poll's subscription")
        return self

    async def __aexit__(self, *exc: object) -> None:
        queue, hub, self.queue, self._hub = self.queue, self._hub, None, None
        if queue is not None and hub is not None:
            await hub.unsubscribe(self.channel, queue)

    async def next(self, deadline: float) -> str | None:
        """Return after the run's next event, at the deadline, or (without Redis) after about
        DB_POLL_SECONDS. Returns what the event says (a status change carries the new status:
        "apply_pending"), or None when nothing is known (the deadline, no Redis, an event
        without detail): the caller checks the run then."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        if self.queue is None:
            await asyncio.sleep(min(DB_POLL_SECONDS, remaining))
            return None
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(self.queue.get(), timeout=remaining)
            except TimeoutError:
                return None
            if data is FAILED:
                self.queue = self._hub = None  # the hub dropped the subscription
                return None
            if isinstance(data, bytes):
                kind, _, detail = data.decode(errors="replace").partition(":")
                if kind in self.kinds:
                    return detail or None
        return None


def _check(view: Callable[..., HttpResponse], request: HttpRequest, args: tuple, kwargs: dict) -> HttpResponse:
    """One run of the sync view, rendered, then its database connection handed back."""
    try:
        response = view(request, *args, **kwargs)
        if hasattr(response, "render"):
            response.render()
        # Whom the view authenticated (DRF sets it on the request), read here, in the view's
        # thread: a session's user is loaded from the database on first use.
        request.long_poll_user_id = getattr(getattr(request, "user", None), "pk", None)  # type: ignore[attr-defined]
        return response
    finally:
        for connection in connections.all(initialized_only=True):
            if not connection.in_atomic_block:  # a test's transaction stays its own
                connection.close()  # back to the pool: no connection is held while waiting


class _Waiting:
    """The user long-polls waiting in this process, in all and per user (counted in memory:
    a cap per process, with nothing to clean up after a crash)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0
        self.per_user: dict[Any, int] = {}

    def take(self, user_id: Any) -> str:
        """Count one more waiting poll of `user_id`; "" when taken, else why not."""
        with self._lock:
            if self.total >= settings.IAC_LONGPOLL_MAX_PER_PROCESS:
                return (f"this server already has {self.total} requests waiting with ?wait= "
                        f"(IAC_LONGPOLL_MAX_PER_PROCESS)")
            mine = self.per_user.get(user_id, 0)
            if mine >= settings.IAC_LONGPOLL_MAX_PER_USER:
                return (f"you already have {mine} requests waiting with ?wait= on this server "
                        f"(IAC_LONGPOLL_MAX_PER_USER)")
            self.total += 1
            self.per_user[user_id] = mine + 1
            return ""

    def give_back(self, user_id: Any) -> None:
        with self._lock:
            self.total -= 1
            left = self.per_user[user_id] - 1
            if left:
                self.per_user[user_id] = left
            else:
                del self.per_user[user_id]


waiting = _Waiting()
# What a refused long-poll is told to wait before trying again: a waiting poll of the same
# caller will have answered by then, or soon after.
RETRY_AFTER_SECONDS = 5


def too_many_waiting(reason: str) -> HttpResponse:
    response = JsonResponse(
        {"detail": f"Too many waiting requests: {reason}. Retry after {RETRY_AFTER_SECONDS} s, or ask "
                   "without ?wait=."}, status=429)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def parse_wait(raw: str | None, bound: float) -> float | None:
    """The wait a long-poll may use, or None (no wait, or a bad value: the view answers 400)."""
    try:
        wait = float(raw) if raw else 0.0
    except ValueError:
        return None
    return wait if 0 < wait <= bound else None


def long_polling(view: Callable[..., HttpResponse], *, bound: float,
                 ready: Callable[[HttpRequest, Any, Any], bool], wake_on: frozenset[str],
                 may_answer: Callable[[HttpRequest, Any, str], bool] | None = None,
                 probe: bool = False) -> Callable[..., Any]:
    """An async view around the sync DRF `view`: without a valid `?wait=`, the view once;
    with it, the view again after each event of the run of a kind in `wake_on` until
    `ready(request, first, data)` holds for its 200 answer (`first`: the data of the first
    answer), or the wait is over. `may_answer(request, first, detail)`: False when an event
    that says `detail` (a status change's new status) cannot make the run ready; the view
    is not run for it (each check is the whole DRF view: authentication, permissions, the
    run's queries, rendering, while the run's terraform starts beside it). `probe`: the
    checks while waiting run the view with `request.long_poll_probe` set, for which it
    answers only what `ready` reads (after the same authentication and permissions); the
    answer is the whole view, run once `ready` holds (or the wait is over)."""

    @functools.wraps(view)
    async def waiting_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        check = sync_to_async(_check)
        wait = parse_wait(request.GET.get("wait"), bound) if request.method == "GET" else None
        if wait is None:
            return await check(view, request, args, kwargs)
        deadline = time.monotonic() + wait
        first = None
        counted = False  # this poll holds one of `waiting`'s places
        try:
            async with RunEvents(kwargs["pk"], wake_on) as events:
                while True:
                    request.long_poll_probe = probe  # type: ignore[attr-defined]
                    response = await check(view, request, args, kwargs)
                    data = getattr(response, "data", None)
                    if response.status_code != 200 or not isinstance(data, dict):
                        return response
                    first = data if first is None else first
                    over = time.monotonic() >= deadline
                    if probe and (over or ready(request, first, data)):
                        # The answer: the whole view now (the run as it is, checked once more).
                        request.long_poll_probe = False  # type: ignore[attr-defined]
                        response = await check(view, request, args, kwargs)
                        data = getattr(response, "data", None)
                        if response.status_code != 200 or not isinstance(data, dict):
                            return response
                    if ready(request, first, data) or over:
                        return response
                    if not counted:
                        # The first check authenticated the caller and found nothing to answer yet:
                        # it waits now, if the caps allow.
                        refused = waiting.take(request.long_poll_user_id)  # type: ignore[attr-defined]
                        if refused:
                            return too_many_waiting(refused)
                        counted = True
                    while (detail := await events.next(deadline)) is not None and may_answer is not None:
                        if may_answer(request, first, detail):
                            break
        finally:
            if counted:
                waiting.give_back(request.long_poll_user_id)  # type: ignore[attr-defined]

    waiting_view.csrf_exempt = True  # type: ignore[attr-defined]  (as DRF's views: token auth)
    return waiting_view
