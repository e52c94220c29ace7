"""Reads for the workspaces list and a workspace page (its pages and its live consumers
share them, so a pushed row is the row the page would render)."""

from __future__ import annotations

from typing import Any

from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery

from iacplatform.permissions import readable_workspaces
from tasks_app.models import Task, Workspace
from tasks_app.states import RunStatus
from tasks_app.workflows.states import Health

# "Needs attention": a run waits for someone's Confirm, or the latest run errored.
ATTENTION_STATUSES = (RunStatus.APPLY_PENDING, RunStatus.ERRORED)
SEARCH_MAX_LENGTH = 100
RUNS_SHOWN = 50


def workspace_rows(user: Any, *, search: str = "", attention: bool = False, health: str = "") -> QuerySet[Workspace]:
    """The workspaces `user` may read, each annotated with its latest run (id, status, time)
    and whether it needs attention; `search` matches the name or the pool's name."""
    latest = Task.objects.filter(workspace=OuterRef("pk")).order_by("-id")
    rows = (
        readable_workspaces(user)
        .select_related("pool")
        .annotate(
            latest_run_id=Subquery(latest.values("id")[:1]),
            latest_run_status=Subquery(latest.values("status")[:1]),
            latest_run_at=Subquery(latest.values("updated_at")[:1]),
            waiting_confirm=Exists(Task.objects.filter(workspace=OuterRef("pk"), status=RunStatus.APPLY_PENDING)),
        )
        .order_by("name")
    )
    # PostgreSQL text cannot hold NUL: such a character matches nothing anyway.
    search = search.replace("\x00", "").strip()[:SEARCH_MAX_LENGTH]
    if search:
        rows = rows.filter(Q(name__icontains=search) | Q(pool__name__icontains=search))
    if attention:
        rows = rows.filter(Q(waiting_confirm=True) | Q(latest_run_status=RunStatus.ERRORED))
    if health in Health.values:
        rows = rows.filter(health=health)
    return rows


def workspace_row(user: Any, workspace_id: int) -> Workspace | None:
    """One row of the list, or None when the user may not read the workspace."""
    return workspace_rows(user).filter(id=workspace_id).first()


def workspace_runs(workspace_id: int) -> QuerySet[Task]:
    # Newest first; a page of history is enough here, the API lists everything.
    return Task.objects.filter(workspace_id=workspace_id).select_related("created_by").order_by("-id")[:RUNS_SHOWN]
