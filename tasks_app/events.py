"""Producers for the live run and workspace pages: publish to Channels groups (names and
the best-effort sender in iacplatform/live.py) after commit."""

from __future__ import annotations

from django.db import transaction

from iacplatform import wakeups
from iacplatform.live import WORKSPACES_GROUP, group_send, run_group, workspace_group

__all__ = ["run_changed", "run_group", "run_log_appended"]


def run_log_appended(task_id: int) -> None:
    wakeups.wake_run(task_id, "log", "a live log update")  # the API's log long-polls (`GET /runs/<id>/logs/?wait=`)
    group_send([(run_group(task_id), {"type": "log.appended"})], "a live log update")


def run_changed(*, task_id: int, workspace_id: int, status: str) -> None:
    """A run's status changed: published once the current transaction commits (at once
    outside one). Called by the one owner of run status, `runs.run_transition`, and by
    `run_create`."""
    message = {"type": "run.changed", "task_id": task_id, "workspace_id": workspace_id, "status": status}
    sends = [(run_group(task_id), message), (workspace_group(workspace_id), message), (WORKSPACES_GROUP, message)]
    transaction.on_commit(lambda: group_send(sends, "a live run update"))
