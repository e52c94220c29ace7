"""Producers for the live UI: publish to Channels groups after commit."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer


def run_group(task_id: int) -> str:
    return f"run-{task_id}"


def run_log_appended(task_id: int) -> None:
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(run_group(task_id), {"type": "log.appended"})
