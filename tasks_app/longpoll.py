"""The REST API's long-polls on a run: `GET /api/v1/runs/<id>/?wait=S&until=...` answers once
the run is in one of `until` (or, without it, once its status changes), and
`GET /api/v1/runs/<id>/logs/?offset=N&wait=S` once there is log past N or the run has ended;
either after S seconds (at most 60) at the latest.

Served asynchronously, like the agents' claim long-poll (agents_app/claim.py): the DRF view
(authentication, permissions, validation, rendering) runs in a thread for each check, and
between checks the request awaits the run's events holding no thread and no database
connection (it is handed back to the pool after each check). A check runs at the start and
after each event of the run: a status change (tasks_app.services.runs.run_transition) or a
log append (tasks_app.events), published through Redis pub/sub after commit. The
subscription is made before the first check, so an event between that check and the wait
is not lost. Without Redis (unreachable at subscribe or during the wait) the check runs about
once a second instead: Redis costs speed, never correctness (iacplatform/wakeups.py)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connections
from django.http import HttpRequest, HttpResponse

from iacplatform import wakeups

# Without Redis, the run is checked this often while a long-poll waits.
DB_POLL_SECONDS = 1.0


class RunEvents:
    """The run's event channel, subscribed (best effort) for the lifetime of `async with`.
    `kinds`: the events that can change the caller's answer ("status", "log"); others are
    skipped without a check (a run's detail does not change when its log grows)."""

    def __init__(self, task_id: int, kinds: frozenset[str] = frozenset({"status", "log"})) -> None:
        self.task_id = task_id
        self.kinds = kinds
        self.client: Any = None
        self.pubsub: Any = None

    async def __aenter__(self) -> RunEvents:
        if wakeups.redis_available():
            try:
                self.client = wakeups.async_client()
                self.pubsub = self.client.pubsub()
                await self.pubsub.subscribe(wakeups.run_channel(self.task_id))
                wakeups.redis_ok()
            except wakeups.REDIS_ERRORS as exc:
                wakeups.redis_failed(exc, "a run long-poll's subscription")
                await self._close()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        pubsub, client, self.pubsub, self.client = self.pubsub, self.client, None, None
        try:
            if pubsub is not None:
                await pubsub.aclose()
            if client is not None:
                await client.aclose()
        except wakeups.REDIS_ERRORS:  # closing a connection to a dead server
            pass

    async def next(self, deadline: float) -> str | None:
        """Return after the run's next event, at the deadline, or (without Redis) after about
        DB_POLL_SECONDS. Returns what the event says (a status change carries the new status:
        "apply_pending"), or None when nothing is known (the deadline, no Redis, an event
        without detail): the caller checks the run then."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        if self.pubsub is None:
            await asyncio.sleep(min(DB_POLL_SECONDS, remaining))
            return None
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                message = await self.pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=min(remaining, DB_POLL_SECONDS)
                )
                data = message.get("data") if message else None
                if isinstance(data, bytes):
                    kind, _, detail = data.decode(errors="replace").partition(":")
                    if kind in self.kinds:
                        return detail or None
                if not wakeups.redis_available():
                    # Another call found Redis gone (a hung server sends no error to a reader).
                    raise wakeups.RedisUnavailable("Redis failed elsewhere in this process during a run long-poll")
        except wakeups.REDIS_ERRORS as exc:
            wakeups.redis_failed(exc, "a run long-poll")
            await self._close()
        return None


def _check(view: Callable[..., HttpResponse], request: HttpRequest, args: tuple, kwargs: dict) -> HttpResponse:
    """One run of the sync view, rendered, then its database connection handed back."""
    try:
        response = view(request, *args, **kwargs)
        if hasattr(response, "render"):
            response.render()
        return response
    finally:
        for connection in connections.all(initialized_only=True):
            if not connection.in_atomic_block:  # a test's transaction stays its own
                connection.close()  # back to the pool: no connection is held while waiting


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
                while (detail := await events.next(deadline)) is not None and may_answer is not None:
                    if may_answer(request, first, detail):
                        break

    waiting_view.csrf_exempt = True  # type: ignore[attr-defined]  (as DRF's views: token auth)
    return waiting_view
