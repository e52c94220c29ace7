"""The run or workspace a page shows, if the user may read it: a 404 page otherwise, so a
page never reveals that a run or workspace exists to someone who may not read it."""

from __future__ import annotations

from django.http import Http404, HttpRequest

from iacplatform.errors import NotFound
from iacplatform.permissions import Action, run_for, workspace_for
from tasks_app.models import Task, Workspace


def readable_run(request: HttpRequest, task_id: int) -> Task:
    try:
        return run_for(request.user, Action.READ, task_id)
    except NotFound as exc:
        raise Http404(str(exc)) from exc


def readable_workspace(request: HttpRequest, workspace_id: int) -> Workspace:
    try:
        return workspace_for(request.user, Action.READ, workspace_id)
    except NotFound as exc:
        raise Http404(str(exc)) from exc
