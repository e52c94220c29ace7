"""Drift detection: scheduled refresh-only plans. A workspace's schedule is a cron expression
in a time zone (croniter computes the next moment); "" takes the site's IAC_DRIFT_SCHEDULE,
"off" never checks. The beat task `drift_checks` (every IAC_DRIFT_INTERVAL_SECONDS) queues a
check for each workspace whose moment came, as a plan-only refresh-only run on its pool like
any plan (warm where its pool keeps a warm plan dir of it). A check waits for its moment to be
right: never while the pool is frozen, only when the workspace has no run in progress and
has a state to compare; it is tried again at the next tick until then. What it finds becomes
the workspace's health (workflows/health.py)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from agents_app.protocol import PlanMode
from agents_app.services.freeze import pool_freeze
from iacplatform.errors import Conflict
from iacplatform.permissions import Action, require
from iacplatform.pglock import try_advisory_lock
from tasks_app.models import StateVersion, Task, Workspace
from tasks_app.services.runs import run_create
from tasks_app.states import FINAL, Operation
from tasks_app.workflows.schedules import OFF, drift_next, effective_schedule

log = logging.getLogger(__name__)

_LOCK = 0x6472_6966  # "drif": one scheduler at a time across workers


def _busy(workspace: Workspace) -> bool:
    return Task.objects.filter(workspace=workspace).exclude(status__in=list(FINAL)).exists()


def drift_check_queue(*, workspace: Workspace, actor: Any, message: str = "drift check") -> Task:
    """Queue a drift check now (a person's "check now", or the schedule's)."""
    if getattr(actor, "is_authenticated", False):
        require(actor, Action.QUEUE_PLAN, workspace)
    if not StateVersion.objects.filter(workspace=workspace).exists():
        raise Conflict(f"workspace '{workspace.name}' has no state yet: there is nothing to compare")
    return run_create(workspace=workspace, operation=Operation.PLAN, mode=PlanMode.REFRESH_ONLY, actor=actor,
                      drift_check=True, message=message)


def drift_checks_start(*, now: datetime | None = None) -> list[int]:
    """The scheduler's tick: queue the checks that are due; returns the run ids."""
    now = now or timezone.now()
    queued: list[int] = []
    with try_advisory_lock(_LOCK) as got:
        if not got:
            return queued
        scheduled = Workspace.objects.select_related("pool")
        if not settings.IAC_DRIFT_SCHEDULE:
            scheduled = scheduled.filter(~Q(drift_schedule=""), ~Q(drift_schedule=OFF))
        for workspace in scheduled.filter(Q(drift_next_at__isnull=True) | Q(drift_next_at__lte=now)):
            schedule = effective_schedule(workspace)
            if not schedule:
                continue
            if workspace.drift_next_at is None:  # a new schedule: its first moment from now
                _set_next(workspace, schedule, now)
                continue
            if pool_freeze(workspace.pool_id).frozen or _busy(workspace):
                continue  # not now: tried again at the next tick
            try:
                task = drift_check_queue(workspace=workspace, actor="drift schedule",
                                         message=f"scheduled drift check ({schedule}, {workspace.drift_timezone})")
                queued.append(task.id)
            except Conflict as exc:
                log.info("drift check of workspace %s skipped: %s", workspace.name, exc)
            _set_next(workspace, schedule, now)
    return queued


def _set_next(workspace: Workspace, schedule: str, now: datetime) -> None:
    Workspace.objects.filter(id=workspace.id).update(drift_next_at=drift_next(schedule, workspace.drift_timezone, now))
