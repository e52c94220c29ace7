"""Warmups: the one owner of a run's warmup lifecycle (tasks_app.dispatch.states.WARMUP) and of its
reservation, which is the Slot reserved for the run (tasks_app.dispatch.slots).

One mechanism serves every trigger named in the design (plan finished without a
reservation, reserving agent offline, agent registered, warmup expired, reservation
released, Confirm dialog opened): the trigger releases the reservation and resets the
warmup to `none`/`expired`, then `warmups_ensure` queues a warmup job for each such run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from agents_app.models import Agent, AgentPool, Pod
from agents_app.protocol import AgentStatus, JobKind, JobOutcome, JobStatus, PodPhase, SlotState, WarmupStatus
from agents_app.services.agents import pool_wake
from agents_app.services.freeze import freeze_text, pool_freeze
from iacplatform import metrics
from iacplatform import pool_events as dispatch_events
from iacplatform.unit_of_work import UnitOfWork, unit_of_work
from tasks_app.dispatch.dispatch_log import dispatch_event
from tasks_app.dispatch.jobs import Finished, job_assign, job_create
from tasks_app.dispatch.models import Job, Slot
from tasks_app.dispatch.slots import slot_reserved_for, slot_transition
from tasks_app.dispatch.states import WARMUP
from tasks_app.models import Task
from tasks_app.selectors import pool_slot_counts
from tasks_app.states import RunStatus

log = logging.getLogger(__name__)
W = WarmupStatus


def warmup_transition(
    task: Task, to: WarmupStatus, *, uow: UnitOfWork, message: str, agent: Agent | None = None,
    retry_count: int | None = None,
) -> None:
    """Move a locked run's warmup to `to`; checks the table. The warmup fields are saved by
    `uow` (merged with the unit's other saves of the run: one UPDATE), with a DispatchEvent
    and the live update. The only writer of Task.warmup_*."""
    WARMUP.check(task.warmup_status, to)
    before = task.warmup_status
    now = timezone.now()
    task.warmup_status = to
    task.warmup_message = message
    fields = ["warmup_status", "warmup_message", "warmup_at", "warmup_expires_at", "warmup_retry_count"]
    if to == W.READY:
        task.warmup_at = now
        task.warmup_expires_at = now + timedelta(seconds=task.workspace.pool.warmup_expire_seconds)
        task.warmup_retry_count = 0
    elif to == W.WARMING:
        task.warmup_at = now
    else:
        task.warmup_expires_at = None
    if retry_count is not None:
        task.warmup_retry_count = retry_count
    uow.save(task, *fields)
    dispatch_event(
        uow, subject="warmup", subject_id=task.id, task=task, agent=agent, from_state=before, to_state=to, message=message
    )
    dispatch_events.dispatch_changed(
        uow, pool_id=task.workspace.pool_id, subject="warmup", subject_id=task.id, state=to, task_id=task.id
    )


def warmup_reserve(task: Task, slot: Slot, *, uow: UnitOfWork, message: str) -> None:
    """The job that just finished in `slot` kept its dir for `task`: reserve the slot and the
    run is ready, on that agent, at once."""
    slot_transition(slot, SlotState.RESERVED, uow=uow, task=task, message=message)
    warmup_transition(task, W.READY, uow=uow, message=message, agent=slot.agent)


def warmup_release(task: Task, *, uow: UnitOfWork, message: str, to: WarmupStatus = W.NONE) -> bool:
    """Drop the run's reservation (the agent deletes the dir when its heartbeat learns of
    it). A ready warmup becomes `to` (none, or expired). Returns whether a slot was held."""
    slot = slot_reserved_for(task.id, lock=True)
    if slot is not None:
        slot_transition(slot, SlotState.IDLE, uow=uow, message=message)
    if task.warmup_status == W.READY or (task.warmup_status == W.EXPIRED and to == W.NONE and slot is not None):
        warmup_transition(task, to, uow=uow, message=message, agent=slot.agent if slot else None)
    return slot is not None


def warmup_started(task: Task, agent: Agent, *, uow: UnitOfWork) -> None:
    warmup_transition(task, W.WARMING, uow=uow, message=f"warming up on {agent.name}", agent=agent)


def warmup_failed(task: Task, message: str, *, uow: UnitOfWork) -> bool:
    """Count a failed warmup attempt; returns whether another attempt is allowed. At the
    limit the warmup is `failed` for good: no loop of agents warming a broken run."""
    count = task.warmup_retry_count + 1
    failed = count >= task.workspace.pool.warmup_max_retries
    if task.warmup_status == W.READY:
        warmup_release(task, uow=uow, message=message)
    warmup_transition(
        task, W.FAILED if failed else W.NONE, uow=uow, retry_count=count,
        message=message + (" (giving up: Confirm will take the cold path)" if failed else ""),
    )
    return not failed


def held_apply(task: Task) -> Job | None:
    """The confirmed apply waiting for this run's warmup (Confirm during a warmup)."""
    return (
        Job.objects.select_for_update(no_key=True, of=("self",))
        .filter(task=task, kind=JobKind.APPLY, status=JobStatus.QUEUED, hold_until__isnull=False)
        .first()
    )


def _release_hold(held: Job, cold_reason: str, *, uow: UnitOfWork) -> None:
    """The warmup a confirmed apply waited for is not coming: any agent takes it now, cold."""
    held.hold_until = None
    held.cold_reason = cold_reason
    held.save(update_fields=["hold_until", "cold_reason"])
    pool_id = held.pool_id
    uow.on_commit(lambda: pool_wake(pool_id))


def _observe_warmup_end(task: Task, outcome: str, *, uow: UnitOfWork) -> None:
    """Count the warmup's end after commit, with its duration when the run was warming
    (warmup_at is then when it started)."""
    started = task.warmup_at if task.warmup_status == W.WARMING else None
    seconds = (timezone.now() - started).total_seconds() if started is not None else None
    uow.on_commit(lambda: metrics.observe_warmup_end(outcome, seconds))


def warmup_job_lost(task: Task, job: Job, *, uow: UnitOfWork) -> None:
    """A running warmup's agent died or stopped reporting it (job already abandoned)."""
    # Usually the sweep, in the Celery worker: this count stays in the worker's registry
    # (see iacplatform.metrics); /metrics shows lost warmups among iac_jobs' failed ones.
    _observe_warmup_end(task, "lost", uow=uow)
    if task.warmup_status == W.WARMING:
        warmup_failed(task, job.error or "warmup lost", uow=uow)
    held = held_apply(task) if task.status == RunStatus.APPLY_QUEUED else None
    if held is not None:
        _release_hold(held, f"the warmup it waited for was lost: {job.error}", uow=uow)


@dataclass(frozen=True)
class WarmupEnded:
    keep_dir: bool
    # The held apply handed to this agent the moment the dir became ready: push it.
    handed_over: tuple[int, int, dict] | None = None  # (agent id, job id, payload)


def warmup_job_finished(finished: Finished, *, uow: UnitOfWork) -> WarmupEnded:
    """A warmup job ended (caller's transaction, job/task/slot locked)."""
    job, task, slot, result = finished.job, finished.task, finished.slot, finished.result
    ok = result.outcome == JobOutcome.SUCCEEDED and result.kept_dir
    _observe_warmup_end(task, "succeeded" if ok else "failed", uow=uow)
    agent = slot.agent if slot is not None else job.agent
    held = held_apply(task) if task.status == RunStatus.APPLY_QUEUED else None
    freeze = pool_freeze(job.pool_id)
    if job.cancel_message or freeze.frozen:
        # The pool entered a freeze window: no reservation while it lasts, no retry counted
        # (the warmup did nothing wrong), and a held apply waits for the window's end, cold.
        why = job.cancel_message or f"the pool is {freeze_text(freeze)}: no warm dir is kept"
        if slot is not None:
            slot_transition(slot, SlotState.IDLE, uow=uow, message=why)
        if task.warmup_status == W.WARMING:
            warmup_transition(task, W.NONE, uow=uow, message=why, agent=agent)
        if held is not None:
            _release_hold(held, why, uow=uow)
        return WarmupEnded(keep_dir=False)
    if held is not None and slot is not None:
        if ok:
            # Confirm came while this warmup ran: the apply starts here now, on the warm dir.
            warmup_reserve(task, slot, uow=uow, message=f"warmed up on {agent.name}")
            waited = (timezone.now() - task.confirmed_at).total_seconds() if task.confirmed_at else 0.0
            note = f"Confirm came during the warmup on {agent.name}; the apply waited {waited:.1f}s for it"
            held.cold_reason = ""
            assigned = job_assign(held, agent, slot, task, uow=uow, message=note, note=note)
            return WarmupEnded(keep_dir=True, handed_over=(agent.id, held.id, assigned.payload()))
        slot_transition(slot, SlotState.IDLE, uow=uow, message="warmup failed")
        warmup_failed(task, result.error or "warmup failed", uow=uow)
        _release_hold(held, f"the warmup it waited for failed on {agent.name}: {result.error or 'no reason given'}", uow=uow)
        return WarmupEnded(keep_dir=False)
    if slot is None:
        return WarmupEnded(keep_dir=False)
    if task.status != RunStatus.APPLY_PENDING or task.warmup_status != W.WARMING:
        # Confirmed, discarded or re-assigned meanwhile: this dir is not needed.
        slot_transition(slot, SlotState.IDLE, uow=uow, message="the run moved on during its warmup")
        if task.warmup_status == W.WARMING:
            warmup_transition(task, W.NONE, uow=uow, message="the run moved on during its warmup", agent=agent)
        return WarmupEnded(keep_dir=False)
    if ok:
        warmup_reserve(task, slot, uow=uow, message=f"warmed up on {agent.name}")
        return WarmupEnded(keep_dir=True)
    slot_transition(slot, SlotState.IDLE, uow=uow, message="warmup failed")
    if warmup_failed(task, result.error or "warmup failed", uow=uow):
        pool_id = job.pool_id
        uow.on_commit(lambda: warmups_ensure(pool_id=pool_id))
    return WarmupEnded(keep_dir=False)


def warmups_ensure(*, pool_id: int) -> list[int]:
    """Queue a warmup job for each apply_pending run of the pool that needs one."""
    pool = AgentPool.objects.get(id=pool_id)
    if not pool.warm_apply or pool_freeze(pool_id).frozen:
        return []  # frozen: the sweep's `warmups` step asks again once the window ends
    created: list[int] = []
    with unit_of_work() as uow:
        candidates = (
            Task.objects.select_for_update(no_key=True, skip_locked=True, of=("self",))
            .select_related("workspace")
            .filter(
                workspace__pool_id=pool_id,
                status=RunStatus.APPLY_PENDING,
                warmup_status__in=[W.NONE, W.EXPIRED],
                warmup_retry_count__lt=pool.warmup_max_retries,
            )
            .exclude(jobs__kind=JobKind.WARMUP, jobs__status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
            .order_by("id")
        )
        for task in candidates:
            job_create(uow=uow, task=task, kind=JobKind.WARMUP, pool_id=pool_id, terraform_version=task.terraform_version,
                       message=task.warmup_message)
            created.append(task.id)
        if created:
            uow.on_commit(lambda: pool_wake(pool_id))
    return created


def warmups_expired() -> list[int]:
    return list(
        Task.objects.filter(
            status=RunStatus.APPLY_PENDING, warmup_status=W.READY, warmup_expires_at__lte=timezone.now()
        ).values_list("id", flat=True)
    )


def warmup_expire(*, task_id: int) -> int | None:
    """A ready warm dir past its expiry is released and warmed up again (not discarded).
    Returns the pool to re-warm in, or None when it was no longer due."""
    now = timezone.now()
    with unit_of_work() as uow:
        task = (
            Task.objects.select_for_update(no_key=True, skip_locked=True, of=("self",)).select_related("workspace")
            .filter(id=task_id, status=RunStatus.APPLY_PENDING, warmup_status=W.READY, warmup_expires_at__lte=now)
            .first()
        )
        if task is None:
            return None
        warmup_release(task, uow=uow, to=W.EXPIRED, message=f"warm dir expired at {now:%H:%M:%S}; warming up again")
        return task.workspace.pool_id


@dataclass(frozen=True)
class ConfirmTarget:
    """Where an apply confirmed now starts: on a reserved slot (fast or rewarmed), after the
    warmup that is running (`wait_for`), or cold anywhere, with the reason."""

    slot: Slot | None = None
    wait_for: Agent | None = None
    cold_reason: str = ""


def confirm_target(task: Task, *, now: datetime, lock: bool = False) -> ConfirmTarget:
    """Confirm uses it, and the run page says the same words."""
    pool = task.workspace.pool
    if not pool.warm_apply:
        return ConfirmTarget(cold_reason=f"warm apply is turned off for pool {pool.name}")
    status = WarmupStatus(task.warmup_status)
    if status == W.READY:
        slot = slot_reserved_for(task.id, lock=lock)
        if slot is None:
            return ConfirmTarget(cold_reason="no agent held a warm dir for this run")
        if slot.agent.status != AgentStatus.ONLINE:
            return ConfirmTarget(cold_reason=f"the reserving agent {slot.agent.name} is offline")
        if task.warmup_expires_at and task.warmup_expires_at <= now:
            return ConfirmTarget(cold_reason="the warm dir expired before Confirm")
        return ConfirmTarget(slot=slot)
    if status == W.WARMING:
        job = (
            Job.objects.select_related("agent")
            .filter(task=task, kind=JobKind.WARMUP, status=JobStatus.RUNNING).order_by("-id").first()
        )
        if job is not None and job.agent is not None and job.agent.status == AgentStatus.ONLINE:
            return ConfirmTarget(wait_for=job.agent)
        return ConfirmTarget(cold_reason="the warmup's agent went away at Confirm")
    return ConfirmTarget(cold_reason={
        W.NONE: task.warmup_message or "no agent held a warm dir for this run",
        W.EXPIRED: "the warm dir expired before Confirm",
        W.FAILED: f"the warmup failed {task.warmup_retry_count} times: {task.warmup_message}",
    }[status])


def pool_make_room(*, pool_id: int) -> list[int]:
    """A full pool never stalls: while plans or applies wait and no online agent of the pool
    has an idle slot, release the oldest reservations, one per waiting job. Those runs are
    warmed up again later (warmups are claimed only when nobody else waits for a slot) or
    go cold at Confirm. Returns the released run ids. An autoscaled pool below its max
    scales up first: a job waits for a new pod at most the pool's pod_start_wait.

    A reservation younger than IAC_RESERVATION_GRACE_SECONDS is kept: the person who queued
    the run is most likely reading its plan and about to confirm it, and releasing it would
    send their apply cold (init again) to save a queued plan a few seconds. The sweep
    releases it once the grace is over."""
    released: list[int] = []
    reserved = Slot.objects.filter(agent__pool_id=pool_id, agent__status=AgentStatus.ONLINE, state=SlotState.RESERVED)
    if not reserved.exists():
        return released  # nothing to release (the common case: one query after each dispatch)
    if pool_freeze(pool_id).frozen:
        return released  # nothing waiting can start; the freeze released the reservations
    with unit_of_work() as uow:
        pool = AgentPool.objects.get(id=pool_id)
        now = timezone.now()
        queued = (
            Job.objects.filter(pool_id=pool_id, status=JobStatus.QUEUED)
            .exclude(kind=JobKind.WARMUP)
            .exclude(hold_until__gt=now)
        )
        # An autoscaled pool below its max gets a new pod for queued work (the autoscaler
        # scales up at once): a job waits for it at most pod_start_wait before a reservation
        # is released for it. At max (or a static pool) nothing more is coming: at once.
        live = Pod.objects.filter(pool_id=pool_id, phase__in=[PodPhase.PENDING, PodPhase.RUNNING]).count()
        if pool.backend != "static" and 0 < live < pool.max_replicas:
            queued = queued.filter(created_at__lte=now - timedelta(seconds=pool.pod_start_wait_seconds))
        waiting = queued.count()
        counts = pool_slot_counts(pool_id)
        need = waiting - counts.idle
        if need <= 0 or counts.reserved == 0:
            return released
        # Candidates first, without locks; then each run's row before its slot: the same
        # order as Confirm (task, then slot), so the two never deadlock. A run being
        # confirmed right now is skipped (SKIP LOCKED): its reservation is about to be used.
        candidates = reserved.order_by("task__warmup_at", "id")
        grace = settings.IAC_RESERVATION_GRACE_SECONDS
        if grace > 0:
            candidates = candidates.filter(task__warmup_at__lte=now - timedelta(seconds=grace))
        candidates = candidates.values_list("task_id", flat=True)
        for task_id in candidates:
            if len(released) >= need:
                break
            task = (
                Task.objects.select_for_update(no_key=True, skip_locked=True, of=("self",))
                .select_related("workspace")
                .filter(id=task_id, status=RunStatus.APPLY_PENDING)
                .first()
            )
            if task is None:
                continue
            if warmup_release(
                task, uow=uow,
                message=(f"reservation released to make room: pool {pool.name} was full "
                         f"({counts.running} running, {counts.reserved} reserved, 0 free)"),
            ):
                released.append(task.id)
        if released:
            uow.on_commit(lambda: (warmups_ensure(pool_id=pool_id), pool_wake(pool_id)))
    return released


def warmups_release_for_freeze(*, pool_id: int, message: str) -> list[int]:
    """The pool entered a freeze window: every reservation is released (its run is warmed up
    again after the window), each run's row before its slot, in its own transaction."""
    released: list[int] = []
    reserved = Slot.objects.filter(agent__pool_id=pool_id, state=SlotState.RESERVED).values_list("task_id", flat=True)
    for task_id in list(reserved):
        with unit_of_work() as uow:
            task = (
                Task.objects.select_for_update(no_key=True, skip_locked=True, of=("self",))
                .select_related("workspace").filter(id=task_id).first()
            )
            if task is not None and warmup_release(task, uow=uow, message=message):
                released.append(task_id)
    return released
