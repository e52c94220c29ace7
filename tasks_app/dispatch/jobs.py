"""Jobs: the dispatch layer's owner of `Job.status` (tasks_app.dispatch.states.JOB): the job's
lifecycle (created, claimed, assigned, leased, finished, abandoned), and the reads a running
job makes of its inputs (plan, configuration).

Claiming is a row lock with SKIP LOCKED plus a status check, so two agents racing for one
job never both get it; losing that race is normal and returns nothing. Each assignment
bumps the job's fencing token (`fence`); every later call about the job must carry it, so
an agent that was declared dead and comes back cannot write logs, plans or results for work
that has moved on.

This layer never changes a run: it returns what happened (`Assigned`, `Finished`,
`Abandoned`) and tasks_app.dispatch.agent_reports (or the sweep) moves the run on. Beside it:
job_payloads (what a job is given), job_output (its log and plan), job_cancels (stopping it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import (
    Case,
    DateTimeField,
    Exists,
    ExpressionWrapper,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.utils import timezone

from agents_app.models import Agent, hash_token, new_token
from agents_app.protocol import AgentStatus, JobKind, JobOutcome, JobResult, JobStatus, SlotState
from agents_app.redaction import redact
from agents_app.services.freeze import pool_frozen_until
from iacplatform import metrics, wakeups
from iacplatform import pool_events as dispatch_events
from iacplatform.errors import Conflict
from iacplatform.unit_of_work import UnitOfWork
from tasks_app.dispatch.dispatch_log import dispatch_event
from tasks_app.dispatch.job_payloads import (
    PayloadReads,
    job_payload,
    mask_ciphertexts,
    reads_with_variables,
    task_locked_for_payload,
)
from tasks_app.dispatch.models import Job, Slot
from tasks_app.dispatch.slots import slot_of_job, slot_transition
from tasks_app.dispatch.states import JOB
from tasks_app.models import LogChunk, Plan, Task
from tasks_app.redaction import run_sensitive_values
from tasks_app.services.state import state_locks_release_for_job

# What every job credential starts with (agents_app.models.new_token); API tokens are hex.
JOB_CREDENTIAL_PREFIX = "job-"


def _lease() -> datetime:
    return timezone.now() + timedelta(seconds=settings.IAC_AGENT_OFFLINE_AFTER_SECONDS)


def job_transition(job: Job, to: JobStatus, *, uow: UnitOfWork, message: str = "", fields: tuple[str, ...] = ()) -> None:
    """Move a locked job to `to` and save it with `fields` now; checks the table; the
    DispatchEvent and the live update go through `uow`. The only writer of Job.status."""
    JOB.check(job.status, to)
    before = job.status
    job.status = to
    if JOB.is_final(to):
        job.finished_at = timezone.now()
        fields = (*fields, "finished_at")
    if before == JobStatus.RUNNING and (JOB.is_final(to) or job.kind == JobKind.PLAN):
        # However it ended (done, failed, cancelled, abandoned), its terraform holds no lock
        # any more. Not for an apply sent back to the queue unacknowledged: its first agent
        # may still be starting terraform, and the lock that terraform holds is what stops
        # it from applying beside the next agent's (its credential is revoked, too).
        state_locks_release_for_job(job=job)
    job.save(update_fields=["status", *fields])
    dispatch_event(
        uow, subject="job", subject_id=job.id, task_id=job.task_id, agent_id=job.agent_id,
        from_state=before, to_state=to, message=message,
    )
    dispatch_events.dispatch_changed(uow, pool_id=job.pool_id, subject="job", subject_id=job.id, state=to,
                                     task_id=job.task_id)


def job_create(*, uow: UnitOfWork, task: Task, kind: JobKind, pool_id: int, message: str = "", **fields: Any) -> Job:
    """A new queued job, inserted now (the caller wakes the pool after commit)."""
    job = Job.objects.create(task=task, pool_id=pool_id, kind=kind, status=JobStatus.QUEUED, **fields)
    dispatch_event(uow, subject="job", subject_id=job.id, task=task, to_state=JobStatus.QUEUED, message=message)
    dispatch_events.dispatch_changed(uow, pool_id=pool_id, subject="job", subject_id=job.id, state=JobStatus.QUEUED,
                                     task_id=task.id)
    return job


@dataclass(frozen=True)
class Assigned:
    job: Job
    task: Task
    slot: Slot
    credential: str
    note: str = ""
    reads: PayloadReads = PayloadReads()  # what was read with the locked run for the payload

    def payload(self) -> dict[str, Any]:
        return job_payload(self.job, self.task, self.credential, reads=self.reads, note=self.note)


def job_claim(*, uow: UnitOfWork, agent: Agent, slot: Slot) -> Assigned | None:
    """Give the (locked, online) agent its next queued job on its (locked, idle) slot: one not
    held for a running warmup, for any terraform version or the agent's. Plans and applies go
    before warmups: a warmup is worth a slot only when nobody is waiting for one. Nothing
    while the pool is frozen (a freeze window); not a job this agent lost a moment ago
    (job_abandon's avoid_agent) while another agent has a free slot."""
    if pool_frozen_until(agent.pool_id) is not None:
        return None
    mine = [int(w) for w in agent.warm_plan_workspaces or []]
    now = timezone.now()
    queued = (
        Job.objects.filter(pool_id=agent.pool_id, status=JobStatus.QUEUED)
        .filter(Q(hold_until__isnull=True) | Q(hold_until__lte=now))
        .filter(Q(terraform_version="") | Q(terraform_version=agent.terraform_version))
    )
    # A job this agent lost a moment ago is left to the pool's other agents while one of them
    # has a free slot (alone, the agent takes it again at once).
    queued = queued.filter(~(Q(avoid_agent=agent, avoid_until__gt=now) & Exists(_others_with_a_free_slot(agent))))
    held_elsewhere = _plans_waiting_for_affinity(agent, mine)
    if held_elsewhere is not None:
        queued = queued.exclude(held_elsewhere)
    # With whether another job of the pool is queued (any: held, another version, lost here):
    # when none is, the caller can stop filling its slots without another query.
    others = Job.objects.filter(pool_id=agent.pool_id, status=JobStatus.QUEUED).exclude(id=OuterRef("id"))
    job = (
        # The job's row only: a run row locked elsewhere (a page's update, a log post) must
        # not hide its job from the claim.
        queued.select_for_update(no_key=True, skip_locked=True, of=("self",))
        .annotate(others_queued=Exists(others))
        .order_by(
            Case(
                # Applies first: someone confirmed them (or their workspace auto-applies) and
                # waits; a re-queued one (its warm agent could not take it) must not wait
                # behind the plans queued since.
                When(kind=JobKind.APPLY, then=Value(0)),
                When(kind=JobKind.WARMUP, then=Value(2)),
                default=Value(1), output_field=IntegerField(),
            ),
            # An apply keeps its run's place: when its plan was queued, not when the apply
            # was (re-)queued. Plans: first queued, first taken, a plan of a workspace this
            # agent holds warm (it skips init here) counted as queued
            # IAC_PLAN_AFFINITY_WAIT_SECONDS earlier: affinity, bounded. Ranked first outright,
            # the plans of the workspaces an agent kept cycling starved the others (a
            # workspace's first plan waited 60-105 s on the dispatch benchmark).
            Case(
                When(kind=JobKind.APPLY, then=Subquery(_plan_queued_at)),
                When(kind=JobKind.PLAN, task__workspace_id__in=mine,
                     then=ExpressionWrapper(F("created_at") - Value(_affinity_head_start()),
                                            output_field=DateTimeField())),
                default=F("created_at"), output_field=DateTimeField(),
            ),
            "id",
        )
        .first()
    )
    if job is None:
        return None
    task, reads = task_locked_for_payload(job.task_id, inline_archive=job.kind != JobKind.APPLY,
                                   state_serial=job.kind == JobKind.PLAN)
    return job_assign(job, agent, slot, task, uow=uow, reads=reads)


def _affinity_head_start() -> timedelta:
    return timedelta(seconds=settings.IAC_PLAN_AFFINITY_WAIT_SECONDS)


# When the run's plan was queued (its latest plan job): the place of its apply in the queue.
_plan_queued_at = (
    Job.objects.filter(task_id=OuterRef("task_id"), kind=JobKind.PLAN).order_by("-id").values("created_at")[:1]
)


def _others_with_a_free_slot(agent: Agent) -> QuerySet[Agent]:
    """The other online agents of the agent's pool with an idle slot."""
    return (
        Agent.objects.filter(pool_id=agent.pool_id, status=AgentStatus.ONLINE, slots__state=SlotState.IDLE)
        .exclude(id=agent.id)
    )


def _plans_waiting_for_affinity(agent: Agent, mine: list[int]) -> Q | None:
    """Plan affinity: the queued plans this agent leaves, for now, to another online agent
    of the pool that holds the workspace's warm plan dir and has an idle slot (it runs them
    without init). Only for IAC_PLAN_AFFINITY_WAIT_SECONDS after the plan was queued, and
    never for a holder without a free slot: a free slot elsewhere wins after that bound."""
    wait = settings.IAC_PLAN_AFFINITY_WAIT_SECONDS
    if wait <= 0:
        return None
    holders = (
        _others_with_a_free_slot(agent)
        .exclude(warm_plan_workspaces=[])
        .values_list("warm_plan_workspaces", flat=True)
        .distinct()
    )
    held = {int(w) for workspaces in holders for w in workspaces} - set(mine)
    if not held:
        return None
    now = timezone.now()
    # Not a plan another agent just lost: it goes to whoever is free (Job.avoid_agent).
    return Q(kind=JobKind.PLAN, task__workspace_id__in=held, created_at__gt=now - timedelta(seconds=wait)) & (
        Q(avoid_until__isnull=True) | Q(avoid_until__lte=now))


def job_assign(job: Job, agent: Agent, slot: Slot, task: Task, *, uow: UnitOfWork, message: str = "",
               note: str = "", reads: PayloadReads | None = None) -> Assigned:
    """Give `job` to `agent` on `slot` (job, slot and task locked by the caller; the slot is
    idle, or reserved for this task when a confirmed apply takes its warm dir). A new fence
    and a new state credential each time: whoever held the job before can no longer report
    on it or lock the state with it. An unsaved job (Confirm's hot path) is inserted
    already assigned: one INSERT, no UPDATE."""
    credential, credential_hash = new_token(JOB_CREDENTIAL_PREFIX.rstrip("-"))
    # Queue wait is observed for a job's first assignment out of the queue only: Confirm's
    # warm apply (unsaved here) never queued, and a re-queued job's created_at is not when
    # it was queued again.
    was_queued = job.pk is not None and job.fence == 0
    job.agent = agent
    job.slot_index = slot.index
    job.fence += 1
    job.claimed_at = timezone.now()
    if was_queued:
        pool, kind, waited = task.workspace.pool.name, job.kind, (job.claimed_at - job.created_at).total_seconds()
        uow.on_commit(lambda: metrics.observe_queue_wait(pool, kind, waited))
    job.lease_expires_at = _lease()
    job.credential_hash = credential_hash
    job.hold_until = None
    job.missed_heartbeats = 0
    # The payload's variables are read now (if the caller did not read them with the run):
    # the job keeps what its agent will mask, and the payload is made from the same reads.
    reads = reads_with_variables(task, reads or PayloadReads())
    job.mask_ciphertexts = [bytes(c) for c in mask_ciphertexts(reads)]
    fields = ("agent", "slot_index", "fence", "claimed_at", "lease_expires_at", "credential_hash", "hold_until",
              "cold_reason", "missed_heartbeats", "mask_ciphertexts")
    if job.pk is None:
        job.status = JobStatus.RUNNING
        job.save()
        dispatch_event(
            uow, subject="job", subject_id=job.id, task=task, agent=agent, to_state=JobStatus.RUNNING,
            message=message or f"assigned to {agent.name}#{slot.index}",
        )
        dispatch_events.dispatch_changed(uow, pool_id=job.pool_id, subject="job", subject_id=job.id,
                                         state=JobStatus.RUNNING, task_id=task.id)
    else:
        job_transition(job, JobStatus.RUNNING, uow=uow, message=message or f"assigned to {agent.name}#{slot.index}",
                       fields=fields)
    slot_transition(slot, SlotState.RUNNING, uow=uow, job=job, task=task)
    return Assigned(job=job, task=task, slot=slot, credential=credential, note=note, reads=reads)


def job_running(job_id: int, agent: Agent, fence: int, *, lock: bool = False) -> Job:
    """The job, if it is still this agent's to work on at this fence; else Conflict."""
    qs = Job.objects.select_for_update(no_key=True, of=("self",)) if lock else Job.objects
    job = qs.filter(id=job_id, agent=agent).first()
    _check_running(job, job_id, fence)
    return job


def _check_running(job: Job | None, job_id: int, fence: int) -> None:
    if job is None:
        raise Conflict(f"job {job_id} is not assigned to this agent")
    if job.fence != fence or job.status != JobStatus.RUNNING:
        raise Conflict(f"job {job_id} moved on (status {job.status}, fence {job.fence}); stop working on it")


def jobs_renew_leases(*, agent: Agent, job_ids: list[int]) -> None:
    """Only the jobs the agent says it runs keep their lease: a job whose claim answer was
    lost on the way never shows up in a heartbeat, and its lease runs out (see the sweep).
    (A lease is not a status: a bulk update is fine.)"""
    Job.objects.filter(agent=agent, status=JobStatus.RUNNING, id__in=job_ids).update(
        lease_expires_at=_lease(), missed_heartbeats=0
    )


def jobs_ack_reported(*, agent: Agent, job_ids: list[int]) -> list[Job]:
    """Applies the (locked) agent reports running that it has not acknowledged yet: the
    heartbeat is their acknowledgement. The agent has the job, so it may already run
    terraform, and it must never be handed to another agent (an ack event lost on the way
    would otherwise send a running apply elsewhere). Returns them locked, acked now."""
    jobs = list(
        Job.objects.select_for_update(no_key=True, of=("self",))
        .filter(agent=agent, status=JobStatus.RUNNING, kind=JobKind.APPLY, acked_at__isnull=True, id__in=job_ids)
        .order_by("id")
    )
    for job in jobs:
        job.acked_at = timezone.now()
        job.save(update_fields=["acked_at"])
    return jobs


# A heartbeat is built after the previous one was answered: the second heartbeat the server
# receives after a job's assignment was built after that assignment was committed, when the
# claim answer had long been sent. A job missing from two such heartbeats never reached the
# agent (its claim answer was lost), or the agent no longer has it.
MISSED_HEARTBEATS_LOST = 2


def jobs_missed_by_heartbeat(*, agent: Agent, job_ids: list[int]) -> list[int]:
    """Count a heartbeat that does not report a running job assigned to the agent before it;
    returns the jobs missing from MISSED_HEARTBEATS_LOST heartbeats (for agent_reports.job_lost).
    (A counter, not a status: a bulk update is fine.)"""
    missing = Job.objects.filter(agent=agent, status=JobStatus.RUNNING, claimed_at__lt=timezone.now()).exclude(
        id__in=job_ids
    )
    missing.update(missed_heartbeats=F("missed_heartbeats") + 1)
    return list(
        missing.filter(missed_heartbeats__gte=MISSED_HEARTBEATS_LOST).order_by("id").values_list("id", flat=True)
    )


@dataclass(frozen=True)
class LockedJob:
    """A job and its run, locked together (job_locked_with_run), with what the same query read:
    the ciphertexts of the sensitive values the job was given (to redact the log and the error
    a result carries; None: an older job's, queried) and, when a log chunk's seq was asked
    for, whether it is stored already (job_append_log's idempotency; None: not asked)."""

    job: Job
    task: Task
    sensitive_ciphertexts: list[bytes] | None
    log_chunk_stored: bool | None = None


def job_locked_with_run(job_id: int, agent: Agent, fence: int, *, log_seq: int | None = None,
                        with_workspace: bool = True) -> LockedJob:
    """The job (still this agent's at this fence) and its run, both locked (in that order, as
    job_running then a lock of the run would), for a caller that passes them to several of
    the services below (a result: its log, plan and finish) instead of each fetching and
    locking them again. One query (see LockedJob), with the run's workspace and pool unless
    the caller needs neither (a log post: the warm apply's first line takes this path)."""
    qs = Job.objects.select_for_update(no_key=True, of=("self", "task"))
    qs = qs.select_related("task__workspace__pool" if with_workspace else "task")
    if log_seq is not None:
        qs = qs.annotate(log_seq_stored=Exists(LogChunk.objects.filter(job=OuterRef("id"), seq=log_seq)))
    job = qs.filter(id=job_id, agent=agent).first()
    _check_running(job, job_id, fence)
    return LockedJob(job=job, task=job.task, sensitive_ciphertexts=job.mask_ciphertexts,
                     log_chunk_stored=job.log_seq_stored if log_seq is not None else None)


def job_locked_by_token(job_id: int, token: str, fence: int, *, log_seq: int) -> LockedJob | None:
    """job_locked_with_run(with_workspace=False) for a caller that has only the agent's token:
    the agent is found in the same query (a log post; the warm apply's first line takes this
    path). None: the token is not that of the job's agent (unknown, or another agent's job:
    the caller asks which, see job_locked_with_run)."""
    job = (
        Job.objects.select_for_update(no_key=True, of=("self", "task")).select_related("task", "agent")
        .annotate(log_seq_stored=Exists(LogChunk.objects.filter(job=OuterRef("id"), seq=log_seq)))
        .filter(id=job_id, agent__token_hash=hash_token(token)).first()
    )
    if job is None:
        return None
    _check_running(job, job_id, fence)
    return LockedJob(job=job, task=job.task, sensitive_ciphertexts=job.mask_ciphertexts,
                     log_chunk_stored=job.log_seq_stored)


def job_plan_bytes(*, agent: Agent, job_id: int, fence: int) -> bytes:
    job = job_running(job_id, agent, fence)
    plan = Plan.objects.filter(task_id=job.task_id).first()
    if plan is None:
        raise Conflict(f"run {job.task_id} has no stored plan")
    return plan.data


def job_configuration(*, agent: Agent, job_id: int, fence: int) -> bytes:
    job = job_running(job_id, agent, fence)
    return bytes(job.task.configuration_version.archive)


_FINAL_STATUS = {
    JobOutcome.SUCCEEDED: JobStatus.SUCCEEDED,
    JobOutcome.FAILED: JobStatus.FAILED,
    JobOutcome.STALE: JobStatus.FAILED,
    JobOutcome.CANCELLED: JobStatus.CANCELLED,
}


@dataclass(frozen=True)
class Finished:
    job: Job
    task: Task
    slot: Slot | None  # the slot the job ran in, locked and still `running`: the caller decides
    result: JobResult


def job_finish(*, uow: UnitOfWork, agent: Agent, job_id: int, fence: int, result: JobResult,
               locked: LockedJob | None = None) -> Finished:
    """Record a job's result (caller's transaction; `locked` as for job_append_log). The job
    is saved now (with an acknowledgement that came with the result, job_append_log). The
    slot is left running for the caller, which frees it or keeps it as the run's reservation."""
    locked = locked or job_locked_with_run(job_id, agent, fence)
    job, task = locked.job, locked.task
    slot = slot_of_job(job.id)
    # The agent redacts too; this is the server's own pass (an older or broken agent), before
    # the error becomes the job's error, the run's message and event rows (run_*_finished and
    # the warmup services read it from the returned result).
    if result.error:  # (a job that succeeded has none: no query for the values)
        sensitive = run_sensitive_values(task, locked.sensitive_ciphertexts)
        result = result.model_copy(update={"error": redact(result.error, sensitive)})
    job.error = result.error
    job.sandbox = result.sandbox or ""
    job.plan_start = result.plan_start or "" if job.kind == JobKind.PLAN else ""
    job.plan_start_reason = result.plan_start_reason if job.plan_start else ""
    job.commands = [command.model_dump(mode="json") for command in result.commands]
    # (acked_at: an apply's acknowledgement that came with its result, job_append_log)
    job_transition(job, _FINAL_STATUS[result.outcome], uow=uow, message=result.outcome,
                   fields=("error", "sandbox", "plan_start", "plan_start_reason", "commands", "acked_at"))
    return Finished(job=job, task=task, slot=slot, result=result)


@dataclass(frozen=True)
class Abandoned:
    job: Job
    requeued: bool  # back in the queue (a plan, or an apply that provably never started)


# How long a job taken back from an agent that lost it is left to the pool's other agents.
def _avoid_seconds() -> float:
    return 2 * settings.IAC_AGENT_HEARTBEAT_SECONDS


def job_abandon(job: Job, *, uow: UnitOfWork, why: str, avoid_agent: bool = False) -> Abandoned:
    """The job's agent died or lost the job (caller holds the job row lock). A plan, and an
    apply the agent never acknowledged, go back to the queue (they changed nothing); the
    rest fail. Frees the slot. The caller moves the run on. `avoid_agent`: the agent lost
    the job (not the platform's fault): for _avoid_seconds() the pool's other agents with a
    free slot get it first (Job.avoid_agent, job_claim)."""
    slot = slot_of_job(job.id)
    if slot is not None:
        slot_transition(slot, SlotState.IDLE, uow=uow, message=why)
    never_ran = job.kind == JobKind.APPLY and job.acked_at is None
    # A job that ran past its bound is never run again: the bound would only fire again.
    if job.timed_out_at is None and (job.kind == JobKind.PLAN or never_ran):
        fields: tuple[str, ...] = ("agent", "credential_hash")
        if avoid_agent and job.agent_id is not None:
            job.avoid_agent_id = job.agent_id
            job.avoid_until = timezone.now() + timedelta(seconds=_avoid_seconds())
            fields += ("avoid_agent", "avoid_until")
        if never_ran and job.agent_id is not None:
            # A push of it still waiting in Redis (its agent's poll never took it: that is why
            # it is lost) is withdrawn, so no poll hands out the superseded assignment. (One
            # taken in the meantime fails at once: its fence and credential are revoked here.)
            agent_id, job_id = job.agent_id, job.id
            uow.on_commit(lambda: wakeups.take_back(agent_id, job_id))
        job.agent = None
        job.credential_hash = ""  # revoked: a superseded terraform cannot lock the state
        if never_ran:
            # Any agent may take it now, on the cold path (the warm dir was on the lost agent).
            job.cold_reason = f"{why}; the apply had not started"
            fields += ("cold_reason",)
        job_transition(job, JobStatus.QUEUED, uow=uow, message=why, fields=fields)
        return Abandoned(job=job, requeued=True)
    job.error = f"{job.timeout_message}; {why}" if job.timed_out_at is not None else f"{why} during the {job.kind}"
    job_transition(job, JobStatus.FAILED, uow=uow, message=why, fields=("error",))
    return Abandoned(job=job, requeued=False)


def jobs_lease_expired(*, pool_id: int | None = None) -> list[int]:
    """Running jobs whose lease ran out although their agent may still be online."""
    qs = Job.objects.filter(status=JobStatus.RUNNING, lease_expires_at__lt=timezone.now())
    if pool_id is not None:
        qs = qs.filter(pool_id=pool_id)
    return list(qs.order_by("id").values_list("id", flat=True))


def jobs_unacked_overdue() -> list[tuple[int, int]]:
    """(job, agent) of applies assigned but not acknowledged within
    IAC_TARGET_CLAIM_TIMEOUT_SECONDS. Late is not lost: the sweep sends one elsewhere only
    when it can take its push back (so the agent never got it); otherwise the agent's
    heartbeats decide (jobs_ack_reported, jobs_missed_by_heartbeat)."""
    cutoff = timezone.now() - timedelta(seconds=settings.IAC_TARGET_CLAIM_TIMEOUT_SECONDS)
    return list(
        Job.objects.filter(status=JobStatus.RUNNING, kind=JobKind.APPLY, acked_at__isnull=True, claimed_at__lt=cutoff)
        .order_by("id").values_list("id", "agent_id")
    )


def run_jobs_locked(task_id: int) -> None:
    """The dispatch core's one lock order is a run's job rows before the run's row (a claim
    locks the job it takes, then its run; a result, a log post, the sweep lock the job with
    or before its run). A service that starts from the run (Cancel, Discard, Confirm, the
    expiries) calls this first: it would otherwise hold the run and wait for a job that a
    claim holds while waiting for the run, a deadlock PostgreSQL breaks by failing one side
    (the person's Cancel, as a 500). A claim skips a job locked here (SKIP LOCKED) and takes
    another. A job inserted after this (only under the run's lock) is the caller's own."""
    list(Job.objects.select_for_update(no_key=True, of=("self",)).filter(task_id=task_id)
         .order_by("id").values_list("id", flat=True))


def job_locked(job_id: int) -> Job:
    return Job.objects.select_for_update(no_key=True, of=("self",)).select_related("agent").get(id=job_id)


def jobs_running_of_agent(*, agent_id: int) -> list[int]:
    return list(Job.objects.filter(agent_id=agent_id, status=JobStatus.RUNNING).order_by("id").values_list("id", flat=True))


def job_by_credential(token: str) -> Job | None:
    """The running job whose state credential this is, with its run and workspace (one query:
    the state backend serves terraform's every state call with it)."""
    return (
        Job.objects.select_related("task__workspace")
        .filter(credential_hash=hash_token(token), status=JobStatus.RUNNING)
        .first()
    )
