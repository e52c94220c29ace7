"""What agents report: registration, heartbeats, claims, log posts and results, and what an
agent's death or a lost job means (agent_set_offline, job_lost, which the sweep also calls).

Each report asks the dispatch layer (jobs, warmups, slots, agents) what happened and moves
the run on (runs). Only the control loop (tasks_app.services.sweep), the pool services that
take agents offline, and the edges import it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agents_app.models import Agent, AgentPool
from agents_app.protocol import (
    AgentStatus,
    FinishReply,
    Heartbeat,
    HeartbeatReply,
    JobKind,
    JobResult,
    JobStatus,
    LogPost,
    Registration,
    RegistrationReply,
    SlotState,
    WarmupStatus,
)
from agents_app.services.agents import (
    agent_add_warm_plan,
    agent_by_token,
    agent_locked_online,
    agent_record_heartbeat,
    agent_record_warm_plans,
    agent_register,
    agent_set_status,
    pool_wake,
)
from agents_app.services.pods import pod_agent_registered
from iacplatform import wakeups
from iacplatform.logs import bound
from iacplatform.unit_of_work import UnitOfWork, unit_of_work
from tasks_app.dispatch.job_cancels import jobs_to_cancel
from tasks_app.dispatch.job_output import job_append_log, job_store_plan, plan_check
from tasks_app.dispatch.jobs import (
    Assigned,
    LockedJob,
    job_abandon,
    job_claim,
    job_finish,
    job_locked,
    job_locked_by_token,
    job_locked_with_run,
    job_running,
    job_transition,
    jobs_ack_reported,
    jobs_missed_by_heartbeat,
    jobs_renew_leases,
    jobs_running_of_agent,
)
from tasks_app.dispatch.models import Slot
from tasks_app.dispatch.slots import slot_idle_of_agent, slot_transition
from tasks_app.dispatch.warmups import (
    warmup_job_finished,
    warmup_job_lost,
    warmup_release,
    warmup_started,
    warmups_ensure,
)
from tasks_app.models import Task
from tasks_app.selectors import agent_could_claim, pool_has_queued_jobs
from tasks_app.services.runs import (
    apply_push,
    run_apply_acked,
    run_apply_finished,
    run_job_lost,
    run_plan_finished,
    run_plan_started,
)
from tasks_app.states import RunStatus

log = logging.getLogger(__name__)

def task_locked(task_id: int) -> Task:
    return Task.objects.select_for_update(no_key=True, of=("self",)).select_related("workspace__pool").get(id=task_id)


# --- registration and heartbeat ----------------------------------------------------------


def agent_join(*, pool: AgentPool, registration: Registration) -> RegistrationReply:
    """An agent process registers (or registers again after a restart, with its credential)."""
    registered = agent_register(pool=pool, registration=registration)
    agent = registered.agent
    pod_agent_registered(agent)  # an agent of a managed pod: the pod is running
    reported = {d.task for d in registration.warm_dirs}
    release: list[int] = sorted(reported)
    if registered.resumed:
        # The previous process is gone, and its running jobs with it (terraform was its
        # child). Its warm dirs are on disk: those the server still reserves stay.
        for job_id in jobs_running_of_agent(agent_id=agent.id):
            job_lost(job_id=job_id, why=f"{agent.name} restarted")
        with unit_of_work() as uow:
            agent = agent_locked_online(agent.id)
            release = warm_dirs_reconcile(agent, reported, uow=uow, grace=False)
    pool_id = pool.id
    transaction.on_commit(lambda: warmups_ensure(pool_id=pool_id))
    return RegistrationReply(
        agent_id=agent.id, token=registered.token, pool=pool.name, resumed=registered.resumed, release=release,
        heartbeat_interval=settings.IAC_AGENT_HEARTBEAT_SECONDS, claim_wait=settings.IAC_CLAIM_LONGPOLL_SECONDS,
    )


def warm_dirs_reconcile(agent: Agent, reported: set[int], *, uow: UnitOfWork, grace: bool) -> list[int]:
    """Hold the server's reservations for a (locked) agent to the dirs it reports. Returns
    the task ids whose dirs it should delete (it holds them, the server does not reserve
    them). A reservation whose dir the agent no longer has is released and warmed up
    elsewhere. With `grace`, a reservation made in the last two heartbeat intervals is
    kept: the heartbeat may have been built just before the plan/warmup reserved it."""
    held = set(Slot.objects.filter(agent=agent, task__isnull=False).values_list("task_id", flat=True))
    lost = Slot.objects.filter(agent=agent, state=SlotState.RESERVED).exclude(task_id__in=reported)
    if grace:
        cutoff = timezone.now() - timedelta(seconds=2 * settings.IAC_AGENT_HEARTBEAT_SECONDS + 1)
        lost = lost.filter(updated_at__lt=cutoff)
    lost_tasks = list(lost.values_list("task_id", flat=True))
    for task_id in lost_tasks:
        warmup_release(task_locked(task_id), uow=uow, message=f"{agent.name} no longer holds the warm dir")
    if lost_tasks:
        pool_id = agent.pool_id
        uow.on_commit(lambda: warmups_ensure(pool_id=pool_id))
    return sorted(reported - held)


def agent_heartbeat(*, agent: Agent, heartbeat: Heartbeat) -> HeartbeatReply:
    """Renew the agent's leases and reconcile the server's reservations with its disk; the
    answer lists the dirs to delete and the jobs to stop."""
    with bound(agent_id=agent.id), unit_of_work() as uow:
        agent = agent_locked_online(agent.id)
        agent_record_heartbeat(
            agent, warm_dirs=[d.model_dump() for d in heartbeat.warm_dirs],
            provider_cache=heartbeat.provider_cache.model_dump() if heartbeat.provider_cache is not None else None,
            warm_plan_workspaces=heartbeat.warm_plan_workspaces, warm_plans_version=heartbeat.warm_plans_version,
        )
        jobs_renew_leases(agent=agent, job_ids=heartbeat.running_jobs)
        for job in jobs_ack_reported(agent=agent, job_ids=heartbeat.running_jobs):
            with bound(job_id=job.id, run_id=job.task_id):
                log.info("apply job %s acknowledged by %s's heartbeat", job.id, agent.name)
                run_apply_acked(task_locked(job.task_id), uow=uow)
        for job_id in jobs_missed_by_heartbeat(agent=agent, job_ids=heartbeat.running_jobs):
            job_lost(job_id=job_id, why=f"{agent.name} does not report it in its heartbeats (it never got the job, "
                                        "or no longer has it)")
        release = warm_dirs_reconcile(agent, {d.task for d in heartbeat.warm_dirs}, uow=uow, grace=True)
        cancel = jobs_to_cancel(agent=agent)
    return HeartbeatReply(release=release, cancel=cancel, heartbeat_interval=settings.IAC_AGENT_HEARTBEAT_SECONDS)


# --- jobs --------------------------------------------------------------------------------


def agent_claim(*, agent_id: int, limit: int = 1) -> list[dict[str, Any]]:
    """Give the agent up to `limit` queued jobs, one per idle slot, each in its own
    transaction. One call fills an agent's free slots: an agent that frees or brings three
    slots does not need three round trips, and once the pool's queue is empty it stops
    without another round of locks (the usual case: one queued plan, three free slots).
    Work that turned out to be pointless when taken (a warmup for a run that moved on) is
    cancelled and the next job is tried."""
    payloads: list[dict[str, Any]] = []
    attempts = 0
    pool_id: int | None = None  # known after the first round
    others_queued = True  # as the last job taken saw the pool's queue
    while len(payloads) < limit and attempts < limit + 10:
        attempts += 1
        if pool_id is not None and not (others_queued and pool_has_queued_jobs(pool_id)):
            # The queue is empty now: no other round of locks. When the job just taken was
            # the only one queued, not even the small query: the answer goes at once (a job
            # queued since then wakes the agent's next poll, made as soon as it has this one).
            break
        with bound(agent_id=agent_id), unit_of_work() as uow:
            agent = agent_locked_online(agent_id)
            pool_id = agent.pool_id
            slot = slot_idle_of_agent(agent.id)
            if slot is None:
                break
            assigned = job_claim(uow=uow, agent=agent, slot=slot)
            if assigned is None:
                break
            others_queued = getattr(assigned.job, "others_queued", True)
            with bound(job_id=assigned.job.id, run_id=assigned.task.id):
                taken = _on_assigned(assigned, uow=uow)
            if taken:
                payloads.append(assigned.payload())
    return payloads


def agent_claim_if_queued(*, agent: Agent, limit: int = 1, woken: bool = False) -> list[dict[str, Any]]:
    """agent_claim, skipped when the agent's pool has no queued job or the agent no idle slot.
    An agent polls again the moment an answer gives it a job (its other slots are free), and
    on a busy pool every queued job wakes every agent, so most polls find nothing to do: one
    small query then instead of agent_claim's locks (the agent's row among them, which its own
    results and Confirm's assignment wait for) while terraform starts beside it. Skipping is
    safe: a slot freed later wakes the agent (a result's follow-up), a job queued later wakes
    the pool. An agent found offline (`agent` as read when its poll came) always takes the full
    path, which answers Gone. `woken`: the poll was woken on the agent's own channel (a slot
    of its freed): the full path at once, without the small query first."""
    if not woken and agent.status == AgentStatus.ONLINE and not agent_could_claim(agent_id=agent.id,
                                                                                  pool_id=agent.pool_id):
        return []
    return agent_claim(agent_id=agent.id, limit=limit)


def _on_assigned(assigned: Assigned, *, uow: UnitOfWork) -> bool:
    """Move the run on for a job an agent just took; False: the job was not needed."""
    job, task, agent = assigned.job, assigned.task, assigned.slot.agent
    if job.kind == JobKind.PLAN:
        run_plan_started(task, agent, uow=uow, reads=assigned.reads)
    elif job.kind == JobKind.WARMUP:
        if task.status != RunStatus.APPLY_PENDING or task.warmup_status not in (WarmupStatus.NONE, WarmupStatus.EXPIRED):
            job_transition(job, JobStatus.CANCELLED, uow=uow, message="the run no longer needs a warmup")
            slot_transition(assigned.slot, SlotState.IDLE, uow=uow, message="warmup not needed")
            return False
        warmup_started(task, agent, uow=uow)
    else:
        # A cold apply: a warm dir elsewhere is of no use to this agent. (The run becomes
        # `applying` when the agent acknowledges the job, see job_log.)
        warmup_release(task, uow=uow, message=f"the apply went cold on {agent.name}")
    return True


def job_log(*, agent: Agent, job_id: int, fence: int, post: LogPost) -> None:
    """A log post from `agent` (see job_log_by_token, the agents' endpoint)."""
    with unit_of_work() as uow:
        _log_append(uow, job_locked_with_run(job_id, agent, fence, log_seq=post.seq, with_workspace=False), post)


def job_log_by_token(*, token: str, job_id: int, fence: int, post: LogPost) -> bool:
    """A log post, from the agent with this token; False when no agent has it. One query
    authenticates, locks the job and its run and reads the values to mask (the job's row
    keeps them) and the chunk's idempotency check (job_locked_by_token); the run's row is
    written once: the warm apply's first line comes with its start and acknowledgement while
    terraform is making its state calls to this same web process, so the post must be cheap
    (one query to find and lock, the chunk, the job's ack, one UPDATE of the run)."""
    with unit_of_work() as uow:
        locked = job_locked_by_token(job_id, token, fence, log_seq=post.seq) if token else None
        if locked is None:  # which error: an unknown token, or a job that is not this agent's
            agent = agent_by_token(token)
            if agent is None:
                return False
            locked = job_locked_with_run(job_id, agent, fence, log_seq=post.seq, with_workspace=False)
        _log_append(uow, locked, post)
    return True


def _log_append(uow: UnitOfWork, locked: LockedJob, post: LogPost) -> None:
    with bound(agent_id=locked.job.agent_id, job_id=locked.job.id):
        appended = job_append_log(uow=uow, locked=locked, post=post)
        if appended is not None and appended.acked_now:
            appended.job.save(update_fields=["acked_at"])
            run_apply_acked(appended.task, uow=uow)


# Plans up to this size are hashed while the result holds its locks (well under a millisecond).
PLAN_HASHED_UNDER_LOCK_BYTES = 1024 * 1024


def job_result(*, agent: Agent, job_id: int, fence: int, result: JobResult, plan: bytes | None = None,
               plan_json: bytes | None = None) -> FinishReply:
    """Record a job's result and move its run on; the answer says whether to keep the dir.
    The result may carry the job's last log text and (a plan job's) the plan, `plan` its
    decoded bytes: stored first, in the same transaction, so the run never shows a result
    without them. `plan_json`: the plan's `terraform show -json`, gzipped (policy checks)."""
    follow_ups: list[Callable[[], Any]] = []
    # Whose job it is comes first (another agent learns nothing more), then the plan's size
    # and sha256: a large plan is hashed before the locks are taken, a small one under them
    # (one query fewer on the way to apply_pending).
    check_first = result.plan is not None and len(plan or b"") > PLAN_HASHED_UNDER_LOCK_BYTES
    if check_first:
        job_running(job_id, agent, fence)
        plan_check(plan or b"", result.plan.sha256)
    if result.warm_plan_kept and result.warm_plans_version is not None and result.warm_plan_workspaces is not None:
        # Recorded before the run moves on (the workspace's next plan prefers this agent).
        agent_record_warm_plans(agent, workspaces=result.warm_plan_workspaces, version=result.warm_plans_version)
    with bound(agent_id=agent.id, job_id=job_id) as bind, unit_of_work() as uow:
        # The job and its run, locked once (the job's lock before the run's) for the log, the
        # plan and the result alike.
        locked = job_locked_with_run(job_id, agent, fence, log_seq=result.log.seq if result.log is not None else None)
        job = locked.job
        if result.plan is not None and not check_first:
            plan_check(plan or b"", result.plan.sha256)
        # The run's fields they set are saved by the unit, merged with the run's move below:
        # one UPDATE of the run, not three.
        if result.log is not None:
            job_append_log(uow=uow, locked=locked, post=result.log)
        if result.plan is not None:
            up = result.plan
            job_store_plan(job, uow=uow, data=plan or b"", sha256=up.sha256, summary=up.summary,
                           has_changes=up.has_changes, locked=locked, json_gz=plan_json)
        finished = job_finish(uow=uow, agent=agent, job_id=job_id, fence=fence, result=result, locked=locked)
        bind(run_id=finished.job.task_id)
        if result.warm_plan_kept and result.warm_plans_version is None:
            # Now, not at the next heartbeat: the workspace's next plan prefers this agent.
            workspace_id = finished.task.workspace_id
            follow_ups.append(lambda: agent_add_warm_plan(agent, workspace_id=workspace_id))
        kind = finished.job.kind
        handed: list[dict[str, Any]] = []  # jobs for this agent, in this answer (FinishReply.jobs)
        if kind == JobKind.PLAN:
            ended = run_plan_finished(finished, uow=uow)
            keep = ended.keep_dir
            follow_ups += ended.follow_ups
            if ended.handed is not None:
                handed.append(ended.handed)
        elif kind == JobKind.WARMUP:
            warm = warmup_job_finished(finished, uow=uow)
            keep = warm.keep_dir
            if warm.handed_over is not None:
                agent_id, apply_id, payload = warm.handed_over
                if agent_id == agent.id:
                    handed.append(payload)  # the apply waited for this warmup: in this answer
                else:
                    # A push that does not reach Redis sends the apply to the queue at once.
                    follow_ups.append(lambda: apply_push(agent_id=agent_id, agent_name=agent.name, job_id=apply_id,
                                                         payload=payload))
        else:
            run_apply_finished(finished, uow=uow)
            keep = False
        # The agent's slot may be free now: wake its long-poll to take queued work at once.
        agent_id_ = agent.id
        follow_ups.append(lambda: wakeups.wake_agent(agent_id_))
        uow.on_commit(lambda: _run_follow_ups(follow_ups))
    return FinishReply(keep_dir=keep, jobs=handed)


def _run_follow_ups(follow_ups: list[Callable[[], Any]]) -> None:
    """After-commit work of a result (wake-ups, warmups). The result is committed: a failure
    here is logged, never turned into an error for the agent, and the sweep re-derives what
    matters (warmups, queues, wake-ups)."""
    for follow_up in follow_ups:
        try:
            follow_up()
        except Exception:  # noqa: BLE001
            log.exception("follow-up after a job result failed")


# --- a job lost, an agent gone (also the sweep's) ----------------------------------------


def job_lost(*, job_id: int, why: str) -> bool:
    """A running job's agent died or stopped reporting it: abandon the job and move its run
    on. Returns False when the job had already moved on."""
    with bound(job_id=job_id) as bind, unit_of_work() as uow:
        job = job_locked(job_id)
        bind(run_id=job.task_id)
        if job.status != JobStatus.RUNNING:
            return False
        log.info("%s job %s of run %s lost: %s", job.kind, job.id, job.task_id, why)
        task = task_locked(job.task_id)
        abandoned = job_abandon(job, uow=uow, why=why, avoid_agent=True)
        if job.kind == JobKind.WARMUP:
            warmup_job_lost(task, job, uow=uow)
        else:
            run_job_lost(task, job, uow=uow, requeued=abandoned.requeued, why=why)
        pool_id = job.pool_id
        uow.on_commit(lambda: (warmups_ensure(pool_id=pool_id), pool_wake(pool_id)))
    return True


def agent_set_offline(*, agent_id: int, reason: str) -> bool:
    """Declare an agent dead. Its running plans are re-queued, its running warmups count as
    failed attempts, its running applies become errored (an interrupted apply may have
    half-written state, so it is never re-run automatically), and its reservations are
    released and warmed up elsewhere."""
    with bound(agent_id=agent_id), unit_of_work() as uow:
        agent = Agent.objects.select_for_update(no_key=True, of=("self",)).filter(id=agent_id, status=AgentStatus.ONLINE).first()
        if agent is None:
            return False
        log.info("agent %s offline: %s", agent.name, reason)
        agent_set_status(agent, AgentStatus.OFFLINE, uow=uow, reason=reason)
        pool_id = agent.pool_id
        for job_id in jobs_running_of_agent(agent_id=agent.id):
            job_lost(job_id=job_id, why=f"{agent.name} went offline ({reason})")
        # Each run's row before its slot, the order Confirm takes them in.
        reserved = Slot.objects.filter(agent=agent, state=SlotState.RESERVED).values_list("task_id", flat=True)
        for task_id in list(reserved):
            warmup_release(task_locked(task_id), uow=uow,
                           message=f"{agent.name} went offline ({reason}); warming up elsewhere")
        for slot in Slot.objects.select_for_update(no_key=True, of=("self",)).select_related("agent").filter(
            agent=agent, state=SlotState.RUNNING
        ):  # a job that was not `running` any more
            slot_transition(slot, SlotState.IDLE, uow=uow, message=f"{agent.name} went offline")
        uow.on_commit(lambda: (warmups_ensure(pool_id=pool_id), pool_wake(pool_id)))
    return True
