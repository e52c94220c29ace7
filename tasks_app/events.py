"""Producers for the live pages: publish to Channels groups (names and the best-effort
sender in iacplatform/live.py) after commit. Messages carry data, never markup: the consumers
render what the pages show."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete

from iacplatform import wakeups
from iacplatform.live import WORKSPACES_GROUP, group_send, run_group, user_group, workspace_group
from iacplatform.unit_of_work import UnitOfWork
from tasks_app.models import WorkspaceAccess

__all__ = ["access_changed", "connect_access_signals", "run_changed", "run_group", "run_log_appended"]


# The largest chunk carried in the group message itself; a bigger one is announced by its
# offsets only and each viewer reads it from the database (in pages). Agents post a few KiB
# at a time, so this is the rare case; it keeps Redis messages small.
LIVE_CHUNK_MAX_BYTES = 64 * 1024


def log_appended_message(*, start: int | None = None, end: int | None = None, text: str | None = None) -> dict:
    """The `log.appended` group message for a chunk stored at [start, end): its text as stored
    (with colour codes; each consumer renders it: HTML for the page, plain for the JSON
    socket). Without a chunk (or one too big), only the news that the log grew: consumers
    then read from the database."""
    message: dict = {"type": "log.appended"}
    if start is None or end is None:
        return message
    message.update(start=start, end=end)
    if text is not None and end - start <= LIVE_CHUNK_MAX_BYTES:
        message.update(text=text)
    return message


def run_log_appended(uow: UnitOfWork, task_id: int, *, start: int | None = None, end: int | None = None,
                     text: str | None = None) -> None:
    """The run's log grew by `text` at [start, end): told by the unit after its commit."""
    # The API's log long-polls (`GET /runs/<id>/logs/?wait=`), and the run page.
    uow.publish(wakeups.run_channel(task_id), "log", "a live log update")
    uow.send([(run_group(task_id), log_appended_message(start=start, end=end, text=text))], "a live log update")


def run_changed(uow: UnitOfWork, *, task_id: int, workspace_id: int, status: str) -> None:
    """A run's status changed: sent by the unit after its commit. Called by the one owner of
    run status, `runs.run_transition`, and by `run_create`."""
    message = {"type": "run.changed", "task_id": task_id, "workspace_id": workspace_id, "status": status}
    uow.send([(run_group(task_id), message), (workspace_group(workspace_id), message), (WORKSPACES_GROUP, message)],
             "a live run update")


def workspace_changed(*, workspace_id: int) -> None:
    """Something of the workspace's page besides its runs changed (a notification delivery
    was attempted): sent once the current transaction commits."""
    message = {"type": "workspace.changed", "workspace_id": workspace_id}
    transaction.on_commit(lambda: group_send([(workspace_group(workspace_id), message)], "a live workspace update"))


def access_changed(user_ids: Iterable[int]) -> None:
    """What these users may see may have changed: once the current transaction commits (at
    once outside one), each of their open live sockets checks again and closes if it may no
    longer show what it shows (iacplatform/live_consumer.py)."""
    sends = [(user_group(user_id), {"type": "access.changed"}) for user_id in sorted(set(user_ids))]
    if sends:
        transaction.on_commit(lambda: group_send(sends, "a live access change"))


# Access changes come through several doors: the access service (API and pages), the admin's
# WorkspaceAccess pages and inlines, and Django's own user and group admin (a team's members,
# a user's active and staff flags), which is not ours to route through a service. Model
# signals see all of them; the ids are read inside the transaction, before a cascade removes
# the rows that name them.


def _team_members(team_id: int) -> list[int]:
    return list(get_user_model().objects.filter(groups__id=team_id).values_list("id", flat=True))


def _on_access_row(sender: Any, instance: WorkspaceAccess, **kwargs: Any) -> None:
    access_changed(_team_members(instance.team_id))


def _on_team_deleted(sender: Any, instance: Group, **kwargs: Any) -> None:
    access_changed(_team_members(instance.id))


def _on_membership(sender: Any, instance: Any, action: str, reverse: bool, pk_set: set[int] | None,
                   **kwargs: Any) -> None:
    if action not in ("post_add", "post_remove", "pre_clear"):
        return
    if not reverse:  # user.groups.…: the instance is the user
        access_changed([instance.pk])
    elif action == "pre_clear":  # team.user_set.clear(): who is in it, before
        access_changed(_team_members(instance.pk))
    else:
        access_changed(pk_set or ())


def _on_user_saved(sender: Any, instance: Any, created: bool, update_fields: Any = None, **kwargs: Any) -> None:
    if created or (update_fields is not None and set(update_fields) <= {"last_login", "password"}):
        return  # a login or a password change: what the user may see is the same
    access_changed([instance.pk])


def _on_user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    access_changed([instance.pk])


def connect_access_signals() -> None:
    """Called once, from the app's `ready`."""
    user_model = get_user_model()
    post_save.connect(_on_access_row, sender=WorkspaceAccess, dispatch_uid="iac-access-row-saved")
    post_delete.connect(_on_access_row, sender=WorkspaceAccess, dispatch_uid="iac-access-row-deleted")
    pre_delete.connect(_on_team_deleted, sender=Group, dispatch_uid="iac-team-deleted")
    m2m_changed.connect(_on_membership, sender=user_model.groups.through, dispatch_uid="iac-team-members")
    post_save.connect(_on_user_saved, sender=user_model, dispatch_uid="iac-user-saved")
    post_delete.connect(_on_user_deleted, sender=user_model, dispatch_uid="iac-user-deleted")
