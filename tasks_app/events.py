"""Producers for the live run and workspace pages: publish to Channels groups (names and
the best-effort sender in iacplatform/live.py) after commit."""

from __future__ import annotations

from django.db import transaction

from iacplatform import wakeups
from iacplatform.live import WORKSPACES_GROUP, group_send, run_group, workspace_group
from tasks_app.logrender import log_html, strip_ansi

__all__ = ["run_changed", "run_group", "run_log_appended"]


# The largest chunk carried in the group message itself; a bigger one is announced by its
# offsets only and each viewer reads it from the database (in pages). Agents post a few KiB
# at a time, so this is the rare case; it keeps Redis messages small.
LIVE_CHUNK_MAX_BYTES = 64 * 1024


def log_appended_message(*, start: int | None = None, end: int | None = None, text: str | None = None) -> dict:
    """The `log.appended` group message for a chunk stored at [start, end): its text (without
    colour codes, for the JSON log socket) and its HTML (for the run page), rendered here once
    for every viewer. Without a chunk (or one too big), only the news that the log grew:
    consumers then read from the database."""
    message: dict = {"type": "log.appended"}
    if start is None or end is None:
        return message
    message.update(start=start, end=end)
    if text is not None and end - start <= LIVE_CHUNK_MAX_BYTES:
        message.update(text=strip_ansi(text), html=log_html(text))
    return message


def run_log_appended(task_id: int, *, start: int | None = None, end: int | None = None, text: str | None = None) -> None:
    """The run's log grew by `text` at [start, end) (after the commit that stored it)."""
    wakeups.wake_run(task_id, "log", "a live log update")  # the API's log long-polls (`GET /runs/<id>/logs/?wait=`)
    message = log_appended_message(start=start, end=end, text=text)
    group_send([(run_group(task_id), message)], "a live log update")


def run_changed(*, task_id: int, workspace_id: int, status: str) -> None:
    """A run's status changed: published once the current transaction commits (at once
    outside one). Called by the one owner of run status, `runs.run_transition`, and by
    `run_create`."""
    message = {"type": "run.changed", "task_id": task_id, "workspace_id": workspace_id, "status": status}
    sends = [(run_group(task_id), message), (workspace_group(workspace_id), message), (WORKSPACES_GROUP, message)]
    transaction.on_commit(lambda: group_send(sends, "a live run update"))
