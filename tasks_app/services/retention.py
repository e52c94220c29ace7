"""Retention: delete what an audit no longer needs, keep what it does.

A run's plan file (the encrypted plan.out) is deleted IAC_RETENTION_PLAN_DAYS (90) after the
run ended, its log IAC_RETENTION_LOG_DAYS (365) after. Only runs in a final status count, and
only by `finished_at`. What stays: the run, its events, the plan's summary and sha256, jobs,
state versions and audit events (never deleted here). The run records when each was pruned
(`Task.plan_pruned_at`, `Task.log_pruned_at`) so pages and the API say so instead of showing
an empty log. Finished work dirs on agents have their own retention, on the agent:
IAC_AGENT_FINISHED_TTL_SECONDS (1 h).

Called by the control loop's `retention` step (tasks_app.services.sweep). Each batch is its
own short transaction; rows another transaction holds are skipped until the next pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from tasks_app.models import LogChunk, Plan, Task
from tasks_app.states import FINAL

# Runs per transaction: a run's log may be thousands of chunk rows.
BATCH = 20
# The sweep ticks every few seconds; retention works in days. Between passes the step does
# nothing, so the sweep does not scan the runs table each tick.
PASS_EVERY_SECONDS = 3600.0
_last_pass: float | None = None


@dataclass
class Pruned:
    plans: list[int]
    logs: list[int]


def _ended_before(days: float, now: datetime) -> QuerySet[Task]:
    return Task.objects.filter(status__in=list(FINAL), finished_at__lt=now - timedelta(days=days))


def _batches(candidates: QuerySet[Task], prune: Callable[[list[int], datetime], None], now: datetime) -> list[int]:
    done: list[int] = []
    while True:
        with transaction.atomic():
            ids = list(
                candidates.order_by("id").select_for_update(no_key=True, skip_locked=True, of=("self",))
                .values_list("id", flat=True)[:BATCH]
            )
            if not ids:
                return done
            prune(ids, now)
        done += ids


def _prune_plans(ids: list[int], now: datetime) -> None:
    # The row stays (summary, sha256, size: what was reviewed); the plan.out bytes go.
    Plan.objects.filter(task_id__in=ids).update(encrypted_data=b"")
    Task.objects.filter(id__in=ids).update(plan_pruned_at=now)


def _prune_logs(ids: list[int], now: datetime) -> None:
    # log_size 0: readers page up to log_size, and a log they could never reach would keep
    # them waiting for the rest.
    LogChunk.objects.filter(task_id__in=ids).delete()
    Task.objects.filter(id__in=ids).update(log_pruned_at=now, log_size=0)


def retention_prune(now: datetime | None = None) -> Pruned:
    """Delete plan files and logs of runs that ended longer ago than their retention;
    returns the ids of the runs pruned."""
    now = now or timezone.now()
    plans = _ended_before(settings.IAC_RETENTION_PLAN_DAYS, now).filter(
        Exists(Plan.objects.filter(task=OuterRef("pk"))), plan_pruned_at__isnull=True
    )
    logs = _ended_before(settings.IAC_RETENTION_LOG_DAYS, now).filter(
        Exists(LogChunk.objects.filter(task=OuterRef("pk"))), log_pruned_at__isnull=True
    )
    return Pruned(plans=_batches(plans, _prune_plans, now), logs=_batches(logs, _prune_logs, now))


def step_retention() -> dict[str, int] | None:
    """The sweep step: one pass an hour (per worker process; a pass finding nothing is two
    queries). Returns how many runs were pruned, None between passes."""
    global _last_pass
    if _last_pass is not None and time.monotonic() - _last_pass < PASS_EVERY_SECONDS:
        return None
    _last_pass = time.monotonic()
    pruned = retention_prune()
    return {"plans": len(pruned.plans), "logs": len(pruned.logs)}


def _note(what: str, pruned_at: datetime | None, finished_at: datetime | None) -> str | None:
    if pruned_at is None:
        return None
    days = (pruned_at - finished_at).days if finished_at else None
    after = f" after {days} days" if days is not None else ""
    return f"{what} pruned{after} (retention), on {pruned_at:%Y-%m-%d}."


def log_pruned_note(task: Task) -> str | None:
    """What pages and the API show instead of a pruned log; None when it was not pruned."""
    return _note("Log", task.log_pruned_at, task.finished_at)


def plan_pruned_note(task: Task) -> str | None:
    """What the run page says when the plan file was pruned (its summary stays)."""
    return _note("Plan file", task.plan_pruned_at, task.finished_at)
