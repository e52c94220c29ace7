"""A workspace's health, as its drift checks find it: the one writer of Workspace.health
(called by run_transition when a drift-check run ends). A drift check is a refresh-only plan:
terraform reads the real infrastructure through the providers and compares it with the state;
what it finds changed outside terraform is the plan summary's `drift` (the agent's
plan_summary, masked like the rest of it)."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from iacplatform.unit_of_work import UnitOfWork
from tasks_app.models import Plan, Task, Workspace
from tasks_app.states import FINAL, RunStatus
from tasks_app.workflows.notifications import notifications_enqueue
from tasks_app.workflows.states import Health, Trigger


def _drifted(task: Task) -> list[dict[str, Any]]:
    summary = Plan.objects.filter(task=task).values_list("summary", flat=True).first() or {}
    return [{"address": d.get("address"), "attributes": [a.get("name") for a in d.get("diff") or []],
             "diff": d.get("diff") or []} for d in summary.get("drift") or []]


def drift_check_finished(task: Task, to: RunStatus, *, uow: UnitOfWork) -> None:
    """The run (locked) moves to `to`: when it is a drift check that ended, record what it
    found on its workspace, and notify "drift detected" when it found drift."""
    if not task.drift_check or to not in FINAL or to in (RunStatus.CANCELLED, RunStatus.DISCARDED):
        return  # a check stopped (by a person, a freeze window) found nothing either way
    now = timezone.now()
    if to in (RunStatus.PLANNED, RunStatus.PLANNED_NO_CHANGES):
        drift = _drifted(task) if to == RunStatus.PLANNED else []
        health = Health.DRIFTED if drift else Health.HEALTHY
        detail: dict[str, Any] = {"run": task.id, "resources": drift}
    else:
        health = Health.CHECK_FAILED
        detail = {"run": task.id, "error": task.message or f"the check ended {to}"}
    # A plain UPDATE: the run's lock is held, and the workspace row is never locked before a
    # run's in this project (runs_start_next locks the workspace, then its runs; here the
    # run is locked already), so no row lock is taken on it.
    Workspace.objects.filter(id=task.workspace_id).update(health=health, health_detail=detail,
                                                          health_checked_at=now)
    if health == Health.DRIFTED:
        notifications_enqueue(workspace_id=task.workspace_id, trigger=Trigger.DRIFT_DETECTED, task=task, uow=uow,
                              event=lambda: {
                                  "run": task.id, "workspace": task.workspace.name, "status": str(to),
                                  "message": "drift detected: " + "; ".join(
                                      f"{d['address']} ({', '.join(d['attributes']) or 'gone'})" for d in drift),
                                  "drift": [{"address": d["address"], "attributes": d["attributes"]} for d in drift],
                              })
