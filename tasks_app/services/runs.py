"""The run lifecycle: one function per state change.

Each locks the task row (select_for_update), checks the transition table in states.py,
writes a TaskEvent, and defers side effects (wake-ups, follow-up work) to on_commit so an
agent never sees a job whose transaction has not committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from iacplatform import wakeups
from iacplatform.api_errors import Conflict
from tasks_app.models import (
    ConfigurationVersion,
    Job,
    JobKind,
    JobStatus,
    StateVersion,
    Task,
    TaskEvent,
    Workspace,
)
from tasks_app.services.audit import audit_record
from tasks_app.states import (
    BLOCKING,
    FINAL,
    Operation,
    RunStatus,
    WarmupStatus,
    check_transition,
)


def _actor_label(actor: Any) -> str:
    return getattr(actor, "username", None) or (actor if isinstance(actor, str) else "system")


def run_transition(task: Task, to: RunStatus, *, message: str = "", actor: Any = "system") -> None:
    """Move a locked task to `to`. Callers hold the row lock and save other fields themselves."""
    check_transition(task.status, to)
    TaskEvent.objects.create(
        task=task, from_status=task.status, to_status=to, message=message, actor=_actor_label(actor)
    )
    task.status = to
    if message:
        task.message = message
    if to in FINAL:
        task.finished_at = timezone.now()
        reservation_release(task)
        # Final runs free the workspace queue.
        workspace_id = task.workspace_id
        transaction.on_commit(lambda: runs_start_next(workspace_id=workspace_id))
    task.save()


def reservation_release(task: Task, *, warmup_status: WarmupStatus | None = None) -> None:
    """Drop the task's warm slot. The agent deletes the dir when its heartbeat learns of it."""
    from agents_app.models import Slot, SlotState

    Slot.objects.filter(task=task, state=SlotState.RESERVED).update(state=SlotState.IDLE, task=None, job=None)
    task.warmup_agent = None
    task.warmup_slot = None
    task.warmup_expires_at = None
    if warmup_status is not None:
        task.warmup_status = warmup_status
    elif task.warmup_status in (WarmupStatus.READY, WarmupStatus.WARMING, WarmupStatus.EXPIRED):
        task.warmup_status = WarmupStatus.NONE


def current_state_serial(workspace_id: int) -> int | None:
    return (
        StateVersion.objects.filter(workspace_id=workspace_id).order_by("-serial").values_list("serial", flat=True).first()
    )


def run_create(*, workspace: Workspace, operation: str, actor: Any, message: str = "") -> Task:
    if operation not in Operation.values:
        raise ValueError(f"operation must be one of {', '.join(Operation.values)}")
    cv = ConfigurationVersion.objects.filter(workspace=workspace).order_by("-id").first()
    if cv is None:
        raise Conflict(f"workspace '{workspace.name}' has no configuration yet: upload one first")
    with transaction.atomic():
        task = Task.objects.create(
            workspace=workspace,
            configuration_version=cv,
            operation=operation,
            created_by=actor if getattr(actor, "is_authenticated", False) else None,
            message=message,
        )
        TaskEvent.objects.create(task=task, to_status=RunStatus.PENDING, actor=_actor_label(actor), message=message)
        transaction.on_commit(lambda: runs_start_next(workspace_id=workspace.id))
    return task


def runs_start_next(*, workspace_id: int) -> list[int]:
    """Start what the per-workspace queue rule allows; returns the started task ids.

    Plan-only runs neither wait nor block. Runs that can apply are FIFO and exclusive: while
    one is planning / apply_pending / apply_queued / applying, later ones stay pending.
    """
    started: list[int] = []
    with transaction.atomic():
        # The workspace row lock serialises concurrent callers for one workspace.
        ws = Workspace.objects.select_for_update().get(id=workspace_id)
        if ws.locked:
            return started
        pending = Task.objects.select_for_update().filter(workspace=ws, status=RunStatus.PENDING).order_by("id")
        blocked = Task.objects.filter(
            workspace=ws, operation=Operation.PLAN_AND_APPLY, status__in=list(BLOCKING)
        ).exists()
        for task in pending:
            if task.operation == Operation.PLAN_AND_APPLY:
                if blocked:
                    continue
                blocked = True
            run_transition(task, RunStatus.PLANNING)
            Job.objects.create(task=task, pool_id=ws.pool_id, kind=JobKind.PLAN)
            started.append(task.id)
        if started:
            pool_id = ws.pool_id
            transaction.on_commit(lambda: wakeups.wake_pool(pool_id))
    return started


@dataclass
class ConfirmResult:
    task: Task
    refused: str = ""  # non-empty: the apply was refused and the run discarded, with this reason


def confirm_target(task: Task, *, now: datetime) -> tuple[Any, str]:
    """Where an apply confirmed now would start: (the agent holding the run warm, "") or
    (None, why it will run cold). Confirm uses it, and the run page says the same words."""
    from agents_app.models import AgentStatus

    agent = task.warmup_agent
    if not task.workspace.pool.warm_apply:
        return None, f"warm apply is turned off for pool {task.workspace.pool.name}"
    if task.warmup_status == WarmupStatus.READY and agent and task.warmup_slot_id:
        if agent.status != AgentStatus.ONLINE:
            return None, f"the reserving agent {agent.name} is offline"
        if task.warmup_expires_at and task.warmup_expires_at <= now:
            return None, "the warm dir expired before Confirm"
        return agent, ""
    return None, {
        WarmupStatus.NONE: "no agent held a warm dir for this run",
        WarmupStatus.READY: "no agent held a warm dir for this run",
        WarmupStatus.WARMING: f"the warmup on {agent.name if agent else 'an agent'} was still running at Confirm",
        WarmupStatus.EXPIRED: "the warm dir expired before Confirm",
        WarmupStatus.FAILED: f"the warmup failed {task.warmup_retry_count} times: {task.warmup_message}",
    }[WarmupStatus(task.warmup_status)]


def run_confirm(*, task_id: int, actor: Any, comment: str = "") -> ConfirmResult:
    """Confirm Apply. At most one apply job per run: the row lock plus the status check make
    a second confirm (double click, two tabs, a retried request) a 409, and a unique
    constraint on (task, kind=apply) backs that up at the database level."""
    with transaction.atomic():
        task = (
            Task.objects.select_for_update(of=("self",))
            .select_related("workspace__pool", "warmup_agent")
            .get(id=task_id)
        )
        if task.status != RunStatus.APPLY_PENDING:
            raise Conflict(f"run {task.id} is '{task.status}': only a run in 'apply_pending' can be confirmed")
        serial = current_state_serial(task.workspace_id)
        if serial != task.base_state_serial:
            reason = (
                f"stale plan: the workspace state changed after the plan (serial {task.base_state_serial} "
                f"at plan time, now {serial}); the run was discarded, queue a new run"
            )
            run_transition(task, RunStatus.DISCARDED, message=reason, actor=actor)
            audit_record(actor=actor, action="run.discard_stale", obj=task, data={"reason": reason})
            return ConfirmResult(task=task, refused=reason)

        now = timezone.now()
        target, cold_reason = confirm_target(task, now=now)
        task.confirmed_at = now
        task.confirmed_by = actor if getattr(actor, "is_authenticated", False) else None
        run_transition(task, RunStatus.APPLY_QUEUED, actor=actor)  # saves the task
        job = Job(task=task, pool_id=task.workspace.pool_id, kind=JobKind.APPLY, target_agent=target,
                  cold_reason=cold_reason)
        pool_id = task.workspace.pool_id
        if target is not None:
            # The hot path: the job is created assigned to the reserving agent and slot, and
            # pushed to its long-poll, which returns it without another database round (see
            # agent_api.claim). (A ready run has no queued warmup: those exist only for runs
            # whose warmup is none or expired.)
            from tasks_app.services.jobs import job_assign_confirmed_apply

            payload = job_assign_confirmed_apply(job=job, task=task)
            agent_id = target.id
            transaction.on_commit(lambda: wakeups.push_job(agent_id, payload))
        else:
            # A queued warmup is pointless now; a running one finishes and sees the run moved on.
            Job.objects.filter(task=task, kind=JobKind.WARMUP, status=JobStatus.QUEUED).update(
                status=JobStatus.CANCELLED, finished_at=now
            )
            job.save()
            transaction.on_commit(lambda: wakeups.wake_pool(pool_id))
        audit_record(actor=actor, action="run.confirm", obj=task, data={"comment": comment, "job": job.id})
    return ConfirmResult(task=task)


def run_discard(*, task_id: int, actor: Any, comment: str = "") -> Task:
    with transaction.atomic():
        task = Task.objects.select_for_update().get(id=task_id)
        if task.status != RunStatus.APPLY_PENDING:
            raise Conflict(f"run {task.id} is '{task.status}': only a run in 'apply_pending' can be discarded")
        run_transition(task, RunStatus.DISCARDED, actor=actor, message=comment or "discarded by " + _actor_label(actor))
        Job.objects.filter(task=task, status=JobStatus.QUEUED).update(status=JobStatus.CANCELLED, finished_at=timezone.now())
        audit_record(actor=actor, action="run.discard", obj=task, data={"comment": comment})
    return task


def run_cancel(*, task_id: int, actor: Any, force: bool = False, comment: str = "") -> Task:
    """Cancel a run. Queued work is dropped at once; running terraform gets SIGINT through the
    agent's heartbeat (SIGKILL with force) and the run becomes `cancelled` when it stops."""
    with transaction.atomic():
        task = Task.objects.select_for_update().get(id=task_id)
        if task.status in FINAL:
            raise Conflict(f"run {task.id} is already '{task.status}'")
        now = timezone.now()
        Job.objects.filter(task=task, status=JobStatus.QUEUED).update(status=JobStatus.CANCELLED, finished_at=now)
        running = Job.objects.filter(task=task, status=JobStatus.RUNNING).exclude(kind=JobKind.WARMUP)
        if running.exists():
            running.update(cancel_requested=True, force_cancel=force)
        else:
            run_transition(task, RunStatus.CANCELLED, actor=actor, message=comment or "cancelled by " + _actor_label(actor))
        audit_record(actor=actor, action="run.cancel", obj=task, data={"force": force, "comment": comment})
    return task


def runs_waiting_reason(task: Task) -> str:
    """Why a pending run has not started, in words for the run page."""
    if task.status != RunStatus.PENDING:
        return ""
    if task.workspace.locked:
        return "the workspace is locked"
    ahead = (
        Task.objects.filter(workspace_id=task.workspace_id, operation=Operation.PLAN_AND_APPLY, status__in=list(BLOCKING))
        .filter(~Q(id=task.id))
        .order_by("id")
        .first()
    )
    if ahead:
        return f"waiting for run {ahead.id} ({ahead.status}) to finish"
    return "waiting to be started"
