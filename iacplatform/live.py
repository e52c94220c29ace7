"""The live UI's Channels groups and a best-effort sender, shared by the producers
(tasks_app/events.py, agents_app/events.py) and the websocket consumers.

Groups (the consumers of the live pages join these):
- `run-<task id>`: `log.appended` (the log grew), `run.changed` (status), `dispatch.changed`
  (one of its jobs or warmups changed: readiness of the Confirm dialog, the timeline).
- `workspace-<workspace id>`: `run.changed` for each of its runs.
- `workspaces`: `run.changed` for every run (the workspaces list; each consumer filters by
  what its user may read).
- `pool-<pool id>`: `dispatch.changed` (jobs, slots, warmups, agents, pods of the pool).

Best effort, like every use of Redis from a request or a service (iacplatform/wakeups.py):
the truth is already in PostgreSQL, and a browser that misses an update reads it on its next
one or on reload. With Redis away a send costs nothing (the shared circuit breaker is open)
or at most SEND_TIMEOUT, and never raises."""

from __future__ import annotations

import asyncio

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


async def _group_send_all(layer, sends: list[tuple[str, dict]]) -> None:
    async def _all() -> None:
        for group, message in sends:
            await layer.group_send(group, message)

    await asyncio.wait_for(_all(), SEND_TIMEOUT)


def group_send(sends: list[tuple[str, dict]], label: str) -> None:
    """Send each (group, message) now; never raises."""
    layer = get_channel_layer()
    if layer is None or not sends or not wakeups.redis_available():
        return
    try:
        async_to_sync(_group_send_all)(layer, sends)
    except wakeups.REDIS_ERRORS as exc:  # a timeout is an OSError too
        wakeups.redis_failed(exc, label)
