"""The live UI's Channels groups and a best-effort sender, shared by the producers
(tasks_app/events.py, iacplatform/pool_events.py) and the websocket consumers.

Groups (the consumers of the live pages join these):
- `run-<task id>`: `log.appended` (the log grew), `run.changed` (status), `dispatch.changed`
  (one of its jobs or warmups changed: readiness of the Confirm dialog, the timeline).
- `workspace-<workspace id>`: `run.changed` for each of its runs.
- `workspaces`: `run.changed` for every run (the workspaces list; each consumer filters by
  what its user may read).
- `pool-<pool id>`: `dispatch.changed` (jobs, slots, warmups, agents, pods of the pool).
- `user-<user id>`: `access.changed` (what the user may read may have changed: every live
  consumer of that user checks again, iacplatform/live_consumer.py).

Messages carry data only (ids, states, offsets, the log's text), never markup: anyone who can
publish to Redis can put anything in them, so the consumers render what the page shows from
this data with Django's escaping, or from the database.

Best effort, like every use of Redis from a request or a service (iacplatform/wakeups.py):
the truth is already in PostgreSQL, and a browser that misses an update reads it on its next
one or on reload. With Redis away a send costs nothing (the shared circuit breaker is open)
or at most SEND_TIMEOUT, and never raises."""

from __future__ import annotations

import asyncio
import contextvars
import enum
from dataclasses import dataclass, field

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from iacplatform import wakeups

SEND_TIMEOUT = wakeups.REDIS_TIMEOUT
WORKSPACES_GROUP = "workspaces"


def run_group(task_id: int) -> str:
    return f"run-{task_id}"


def workspace_group(workspace_id: int) -> str:
    return f"workspace-{workspace_id}"


def pool_group(pool_id: int) -> str:
    return f"pool-{pool_id}"


def user_group(user_id: int) -> str:
    return f"user-{user_id}"


class Close(enum.IntEnum):
    """The application close codes (4000-4999) of the live pages' websockets; the pages say
    what each means (static/js/live.js). The ws extension reconnects only after a drop
    (1006, 1011-1013), never after one of these."""

    BAD_REQUEST = 4400
    UNAUTHENTICATED = 4401
    ACCESS_LOST = 4403  # the viewer may no longer see what the socket shows
    NOT_FOUND = 4404  # at connect: no such object, or one the user may not see (before the handshake)
    TOO_MANY = 4429  # the user's live sockets in this process are at IAC_WS_MAX_PER_USER


async def _group_send_all(layer, sends: list[tuple[str, dict]]) -> None:
    async def _all() -> None:
        for group, message in sends:
            await layer.group_send(group, message)

    await asyncio.wait_for(_all(), SEND_TIMEOUT)


@dataclass
class Outbox:
    """A request's after-commit sends and publishes (its units of work hand them over at their
    commits, iacplatform/unit_of_work.py), sent together once its answer is out: each group
    send is a hop to the event loop and a few Redis round trips (12-260 ms for an agent
    claim's on a loaded machine) that the answer, and the wake-ups and pushes registered
    after them, need not wait for. Made by the request's edge: every sync view
    (iacplatform/asgi_handler.py) and the agents' claim (tasks_app/dispatch/claim.py)."""

    sends: list[tuple[str, dict]] = field(default_factory=list)
    publishes: list[tuple[str, str | bytes]] = field(default_factory=list)
    token: contextvars.Token | None = None
    # Set once it is being sent: what comes later (a view's thread that outlived its request)
    # is sent at once, not kept for nobody.
    closed: bool = False


# The outbox of the request being answered in this context (and the threads it starts).
_outbox: contextvars.ContextVar[Outbox | None] = contextvars.ContextVar("iac_request_outbox", default=None)


def open_outbox() -> Outbox:
    """The request's outbox, from now on in this context, until `close_outbox`."""
    outbox = Outbox()
    outbox.token = _outbox.set(outbox)
    return outbox


def request_outbox() -> Outbox | None:
    """The outbox of the request this code answers, if its edge made one."""
    return _outbox.get()


def send_after(sends: list[tuple[list[tuple[str, dict]], str]], publishes: list[tuple[str, str | bytes, str]],
               outbox: Outbox | None) -> None:
    """A committed unit's sends and publishes, each with the label its outbox warning would
    name: into `outbox` while its request is answered, else out now (the publishes first, as
    a request's go); never raises."""
    if outbox is not None and not outbox.closed:
        outbox.publishes.extend((channel, message) for channel, message, _ in publishes)
        for group_sends, _ in sends:
            outbox.sends.extend(group_sends)
        return
    for channel, message, label in publishes:
        wakeups.publish(channel, message, label)
    for group_sends, label in sends:
        group_send(group_sends, label)


async def close_outbox(outbox: Outbox, label: str = "live updates after a request") -> None:
    """Stop collecting and send what was collected, in order, from the event loop: the
    publishes in one round trip, then the group sends; never raises."""
    if outbox.token is not None:
        try:
            _outbox.reset(outbox.token)
        except ValueError:  # closed from another context (the request's is gone with it)
            pass
        outbox.token = None
    outbox.closed = True
    publishes, outbox.publishes = outbox.publishes, []
    await wakeups.publish_all(publishes, label)
    sends, outbox.sends = outbox.sends, []
    layer = get_channel_layer()
    if layer is None or not sends or not wakeups.redis_available():
        return
    try:
        await _group_send_all(layer, sends)
    except wakeups.REDIS_ERRORS as exc:
        wakeups.redis_failed(exc, label)


def group_send(sends: list[tuple[str, dict]], label: str) -> None:
    """Send each (group, message) now; never raises."""
    _send_now(sends, label)


# Sends started on a running loop (see _send_now), kept until done: the loop holds only weak
# references to its tasks.
_on_loop: set[asyncio.Task] = set()


def _send_now(sends: list[tuple[str, dict]], label: str) -> None:
    layer = get_channel_layer()
    if layer is None or not sends or not wakeups.redis_available():
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        # Sync code called from a thread that runs an event loop (async_to_sync refuses to
        # block it): the sends go out from that loop once it runs again.
        task = loop.create_task(close_outbox(Outbox(sends=list(sends)), label))
        _on_loop.add(task)
        task.add_done_callback(_on_loop.discard)
        return
    try:
        async_to_sync(_group_send_all)(layer, sends)
    except wakeups.REDIS_ERRORS as exc:  # a timeout is an OSError too
        wakeups.redis_failed(exc, label)
