"""Producers for the live UI: publish to Channels groups after commit.

Best effort, like every use of Redis from a request or a service (iacplatform/wakeups.py):
the log is already in PostgreSQL, and a browser that misses an update reads it on its next
one or on reload. With Redis away the call costs nothing (the shared circuit breaker is
open) or at most SEND_TIMEOUT, and never raises."""

from __future__ import annotations

import asyncio

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from iacplatform import wakeups

SEND_TIMEOUT = wakeups.REDIS_TIMEOUT


def run_group(task_id: int) -> str:
    return f"run-{task_id}"


async def _group_send(layer, group: str, message: dict) -> None:
    await asyncio.wait_for(layer.group_send(group, message), SEND_TIMEOUT)


def run_log_appended(task_id: int) -> None:
    wakeups.wake_run(task_id, "log", "a live log update")  # the API's log long-polls (`GET /runs/<id>/logs/?wait=`)
    layer = get_channel_layer()
    if layer is None or not wakeups.redis_available():
        return
    try:
        async_to_sync(_group_send)(layer, run_group(task_id), {"type": "log.appended"})
    except wakeups.REDIS_ERRORS as exc:  # a timeout is an OSError too
        wakeups.redis_failed(exc, "a live log update")
