"""Drift detection: scheduled refresh-only plans. A workspace's schedule is a cron expression
in a time zone (croniter computes the next moment); "" takes its pool's default schedule (in
the pool's time zone), else the site's IAC_DRIFT_SCHEDULE; "off" never checks. The beat task `drift_checks` (every IAC_DRIFT_INTERVAL_SECONDS) queues a
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
from django.db.models import Case, CharField, Q, Value, When
from django.db.models.functions import Concat
from django.utils import timezone

from agents_app.protocol import PlanMode
from agents_app.services.freeze import pool_freeze
from iacplatform.errors import Conflict
from iacplatform.permissions import Action, require
from iacplatform.pglock import try_advisory_lock
from tasks_app.models import StateVersion, Task, Workspace
from tasks_app.services.runs import run_create
from tasks_app.states import FINAL, Operation
from tasks_app.workflows.schedules import OFF, drift_next, schedule_key, schedule_source

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


def _schedule_key_sql() -> Case:
    """schedule_key(*schedule_source(workspace)) in SQL, for the rows of Workspace."""
    site = settings.IAC_DRIFT_SCHEDULE
    return Case(
        When(~Q(drift_schedule=""), then=Concat("drift_schedule", Value(" "), "drift_timezone")),
        When(~Q(pool__drift_schedule=""), then=Concat("pool__drift_schedule", Value(" "), "pool__drift_timezone")),
        default=Concat(Value(f"{site} "), "drift_timezone") if site else Value(""),
        output_field=CharField(),
    )


def drift_checks_start(*, now: datetime | None = None) -> list[int]:
    """The scheduler's tick: queue the checks that are due; returns the run ids. A workspace
    follows its own schedule, else its pool's default, else the site's (schedule_source);
    whichever changed is a new schedule, whose first moment is counted from now."""
    now = now or timezone.now()
    queued: list[int] = []
    with try_advisory_lock(_LOCK) as got:
        if not got:
            return queued
        inherits = Q(drift_schedule="")
        scheduled = (~inherits & ~Q(drift_schedule=OFF)) | (
            inherits & ~Q(pool__drift_schedule="") & ~Q(pool__drift_schedule=OFF))
        if settings.IAC_DRIFT_SCHEDULE:
            scheduled |= inherits & Q(pool__drift_schedule="")
        due = (Q(drift_next_at__isnull=True) | Q(drift_next_at__lte=now)
               | ~Q(drift_next_for=_schedule_key_sql()))
        for workspace in Workspace.objects.select_related("pool").filter(scheduled).filter(due):
            schedule, tz = schedule_source(workspace)
            key = schedule_key(schedule, tz)
            if workspace.drift_next_at is None or workspace.drift_next_for != key:
                _set_next(workspace, schedule, tz, key, now)  # a new schedule: its first moment from now
                continue
            if pool_freeze(workspace.pool_id).frozen or _busy(workspace):
                continue  # not now: tried again at the next tick
            try:
                task = drift_check_queue(workspace=workspace, actor="drift schedule",
                                         message=f"scheduled drift check ({schedule}, {tz})")
                queued.append(task.id)
            except Conflict as exc:
                log.info("drift check of workspace %s skipped: %s", workspace.name, exc)
            _set_next(workspace, schedule, tz, key, now)
    return queued


def _set_next(workspace: Workspace, schedule: str, tz: str, key: str, now: datetime) -> None:
    Workspace.objects.filter(id=workspace.id).update(
        drift_next_at=drift_next(schedule, tz, now) if schedule and schedule != OFF else None, drift_next_for=key)
