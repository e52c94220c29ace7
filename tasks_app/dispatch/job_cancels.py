"""Stopping jobs: queued jobs cancelled, cancel orders to running jobs' agents (a person's
Cancel, a freeze window, a bound that fired: pushed to the agent's long-poll and repeated in
every heartbeat answer), and the timeouts (jobs past their pool's bound, their kill grace,
and those their agent will not stop). A cancel order is not a status change: the job ends
when its agent reports it, or when the sweep gives up on it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from agents_app.models import Agent
from agents_app.protocol import CancelOrder, JobKind, JobStatus
from iacplatform import wakeups
from iacplatform.unit_of_work import UnitOfWork
from tasks_app.dispatch.dispatch_log import dispatch_event
from tasks_app.dispatch.jobs import job_transition
from tasks_app.dispatch.models import Job
from tasks_app.models import Task


def jobs_cancel_queued(*, task: Task, uow: UnitOfWork, message: str, kind: JobKind | None = None) -> int:
    """Queued jobs of a run that nobody needs any more (run cancelled, discarded, confirmed)."""
    qs = Job.objects.select_for_update(no_key=True, of=("self",)).filter(task=task, status=JobStatus.QUEUED)
    if kind is not None:
        qs = qs.filter(kind=kind)
    count = 0
    for job in qs:
        job_transition(job, JobStatus.CANCELLED, uow=uow, message=message)
        count += 1
    return count


def jobs_request_cancel(*, task: Task, uow: UnitOfWork, force: bool) -> bool:
    """Ask the agents running the run's plan or apply to stop: the order is pushed to each
    agent's claim long-poll after commit (terraform gets SIGINT within a second) and repeated
    in every heartbeat answer until the job ends (the way it arrives while Redis is down).
    Returns whether any such job runs. (A cancel request is not a status change.)"""
    running = Job.objects.filter(task=task, status=JobStatus.RUNNING).exclude(kind=JobKind.WARMUP)
    if not running.update(cancel_requested=True, force_cancel=force):
        return False
    for job in running.only("id", "agent_id", "cancel_grace_seconds"):
        _cancel_push(job, uow=uow, force=force)
    return True


def _cancel_push(job: Job, *, uow: UnitOfWork, force: bool) -> None:
    """After commit: the job's cancel order to its agent's long-poll (best effort)."""
    if job.agent_id is None:
        return
    agent_id = job.agent_id
    order = CancelOrder(id=job.id, force=force, grace=job.cancel_grace_seconds).model_dump(mode="json")
    uow.on_commit(lambda: wakeups.push_cancel(agent_id, order))


def jobs_to_stop_for_freeze(*, pool_id: int) -> list[int]:
    """Running plans and warmups of the pool not yet told to stop (applies always finish)."""
    return list(
        Job.objects.filter(pool_id=pool_id, status=JobStatus.RUNNING, cancel_requested=False,
                           kind__in=[JobKind.PLAN, JobKind.WARMUP])
        .order_by("id").values_list("id", flat=True)
    )


def job_stop(job: Job, *, uow: UnitOfWork, message: str, grace: int) -> None:
    """Tell the (locked, running) job's agent to stop it, through a cancel order (pushed
    now, repeated by every heartbeat: SIGINT, SIGKILL after `grace` seconds), because of the platform, not a user: the
    run or warmup ends with `message`. Not a status change; the DispatchEvent records it."""
    job.cancel_requested = True
    job.cancel_grace_seconds = grace
    job.cancel_message = message
    job.save(update_fields=["cancel_requested", "cancel_grace_seconds", "cancel_message"])
    _cancel_push(job, uow=uow, force=job.force_cancel)
    dispatch_event(
        uow, subject="job", subject_id=job.id, task_id=job.task_id, agent_id=job.agent_id,
        from_state=job.status, to_state=job.status, message=message,
    )


def jobs_cancel_queued_of_pool(*, pool_id: int, uow: UnitOfWork, kind: JobKind, message: str) -> list[int]:
    """Cancel the pool's queued jobs of one kind (queued warmups when it enters a freeze)."""
    cancelled = []
    for job in Job.objects.select_for_update(no_key=True, skip_locked=True, of=("self",)).filter(
        pool_id=pool_id, kind=kind, status=JobStatus.QUEUED
    ).order_by("id"):
        job_transition(job, JobStatus.CANCELLED, uow=uow, message=message)
        cancelled.append(job.task_id)
    return cancelled


def jobs_to_cancel(*, agent: Agent) -> list[CancelOrder]:
    """The agent's jobs it must stop, as the heartbeat's answer orders them (repeated until
    they end), with the kill grace of a bound that fired."""
    rows = Job.objects.filter(agent=agent, status=JobStatus.RUNNING, cancel_requested=True).order_by("id")
    return [CancelOrder(id=job_id, force=force, grace=grace)
            for job_id, force, grace in rows.values_list("id", "force_cancel", "cancel_grace_seconds")]


# --- bounds (the sweep's `bounds` step, tasks_app.services.sweep) ------------------------


def jobs_running_past_bound(*, now: datetime) -> list[int]:
    """Running plans and acknowledged applies that ran past their pool's bound and have not
    been told to stop for it yet (a plan's clock starts at its claim, an apply's at its
    acknowledgement: an unacknowledged apply has its own, much shorter bound)."""
    running = (
        Job.objects.filter(status=JobStatus.RUNNING, timed_out_at__isnull=True)
        .exclude(kind=JobKind.WARMUP).select_related("pool")
    )
    due = []
    for job in running.only("id", "kind", "claimed_at", "acked_at", "pool__plan_timeout_seconds",
                            "pool__apply_timeout_seconds"):
        if job.kind == JobKind.PLAN and job.claimed_at is not None:
            if job.claimed_at + timedelta(seconds=job.pool.plan_timeout_seconds) <= now:
                due.append(job.id)
        elif job.kind == JobKind.APPLY and job.acked_at is not None:
            if job.acked_at + timedelta(seconds=job.pool.apply_timeout_seconds) <= now:
                due.append(job.id)
    return due


def job_time_out(job: Job, *, uow: UnitOfWork, grace: int, message: str) -> None:
    """The (locked, running) job ran past its bound: its agent is told to stop it, through
    the heartbeat's cancel orders: SIGINT, then SIGKILL after `grace` seconds. Not a status
    change (the job ends when the agent reports it, or when the sweep gives up on it); the
    DispatchEvent records it. `message` is what the run will end with."""
    job.cancel_requested = True
    job.cancel_grace_seconds = grace
    job.timed_out_at = timezone.now()
    job.timeout_message = message
    job.save(update_fields=["cancel_requested", "cancel_grace_seconds", "timed_out_at", "timeout_message"])
    dispatch_event(
        uow, subject="job", subject_id=job.id, task_id=job.task_id, agent_id=job.agent_id,
        from_state=job.status, to_state=job.status, message=message,
    )


def jobs_timed_out_unstopped(*, now: datetime) -> list[int]:
    """Timed-out jobs still running after their kill grace plus the offline timeout: their
    agent heartbeats but does not stop them (or cannot), and the server gives up on them."""
    offline = settings.IAC_AGENT_OFFLINE_AFTER_SECONDS
    rows = Job.objects.filter(status=JobStatus.RUNNING, timed_out_at__isnull=False)
    return [
        job_id for job_id, at, grace in rows.order_by("id").values_list("id", "timed_out_at", "cancel_grace_seconds")
        if at + timedelta(seconds=(grace or 0) + offline) <= now
    ]


def jobs_timed_out_to_kill(*, now: datetime) -> list[int]:
    """Timed-out jobs past their kill grace not yet ordered killed: the heartbeat's order
    becomes SIGKILL (the agent's own timer does the same; this covers an agent that missed
    the first order)."""
    rows = Job.objects.filter(status=JobStatus.RUNNING, timed_out_at__isnull=False, force_cancel=False)
    return [
        job_id for job_id, at, grace in rows.order_by("id").values_list("id", "timed_out_at", "cancel_grace_seconds")
        if at + timedelta(seconds=grace or 0) <= now
    ]


def job_kill(job: Job) -> None:
    """Order the (locked) job's agent to SIGKILL it (a cancel request, not a status change)."""
    job.force_cancel = True
    job.save(update_fields=["force_cancel"])
