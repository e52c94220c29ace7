"""What agents tell the platform, and the control loop: the top service layer.

Everything an agent reports (registration, heartbeat, claim, log, result) and everything
the sweep notices (silent agents, expired leases and warm dirs, full pools) arrives here.
This module asks the dispatch layer (jobs, warmups, slots, agents) what happened and moves
the run on (runs). Nothing below imports it.

Each sweep step runs on its own, and each item inside a step in its own transaction: one
failing step is logged and the others still run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agents_app.models import Agent, AgentPool, FreezeWindow, Slot
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
    agent_locked_online,
    agent_record_heartbeat,
    agent_register,
    agent_set_status,
    agents_silent,
    pool_rotate_token,
    pool_wake,
)
from agents_app.services.freeze import Freeze, moment_text, pool_freeze
from agents_app.services.pods import pod_agent_registered
from agents_app.services.slots import slot_idle_of_agent, slot_transition
from iacplatform import wakeups
from iacplatform.errors import PlatformError
from iacplatform.logs import bound
from iacplatform.pglock import try_advisory_lock
from iacplatform.row_batch import rows_batched
from tasks_app.models import Job, SweepHeartbeat, Task
from tasks_app.selectors import (
    NoAgent,
    agent_could_claim,
    duration_text,
    job_no_agent_since,
    jobs_waiting_for_an_agent,
    pool_has_queued_jobs,
    pool_no_agent,
)
from tasks_app.services.audit import audit_record
from tasks_app.services.jobs import (
    Assigned,
    job_abandon,
    job_append_log,
    job_claim,
    job_finish,
    job_kill,
    job_locked,
    job_locked_with_run,
    job_running,
    job_stop,
    job_store_plan,
    job_time_out,
    job_transition,
    jobs_ack_reported,
    jobs_cancel_queued_of_pool,
    jobs_lease_expired,
    jobs_missed_by_heartbeat,
    jobs_renew_leases,
    jobs_running_of_agent,
    jobs_running_past_bound,
    jobs_timed_out_to_kill,
    jobs_timed_out_unstopped,
    jobs_to_cancel,
    jobs_to_stop_for_freeze,
    jobs_unacked_overdue,
    plan_check,
)
from tasks_app.services.retention import step_retention
from tasks_app.services.runs import (
    apply_push,
    run_apply_acked,
    run_apply_finished,
    run_apply_job_restore,
    run_confirm,
    run_expire_pending,
    run_job_lost,
    run_no_agent,
    run_note,
    run_plan_finished,
    run_plan_started,
    runs_apply_pending_past_bound,
    runs_auto_apply_due,
    runs_confirmed_without_apply,
    runs_start_next,
)
from tasks_app.services.warmups import (
    pool_make_room,
    warmup_expire,
    warmup_job_finished,
    warmup_job_lost,
    warmup_release,
    warmup_started,
    warmups_ensure,
    warmups_expired,
    warmups_release_for_freeze,
)
from tasks_app.states import RunStatus

log = logging.getLogger(__name__)


def _task_locked(task_id: int) -> Task:
    return Task.objects.select_for_update(no_key=True, of=("self",)).select_related("workspace__pool").get(id=task_id)


# --- registration and heartbeat ---------------------------------------------------------


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
        with transaction.atomic():
            agent = agent_locked_online(agent.id)
            release = warm_dirs_reconcile(agent, reported, grace=False)
    pool_id = pool.id
    transaction.on_commit(lambda: warmups_ensure(pool_id=pool_id))
    return RegistrationReply(
        agent_id=agent.id, token=registered.token, pool=pool.name, resumed=registered.resumed, release=release,
        heartbeat_interval=settings.IAC_AGENT_HEARTBEAT_SECONDS, claim_wait=settings.IAC_CLAIM_LONGPOLL_SECONDS,
    )


def warm_dirs_reconcile(agent: Agent, reported: set[int], *, grace: bool) -> list[int]:
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
        warmup_release(_task_locked(task_id), message=f"{agent.name} no longer holds the warm dir")
    if lost_tasks:
        pool_id = agent.pool_id
        transaction.on_commit(lambda: warmups_ensure(pool_id=pool_id))
    return sorted(reported - held)


def agent_heartbeat(*, agent: Agent, heartbeat: Heartbeat) -> HeartbeatReply:
    """Renew the agent's leases and reconcile the server's reservations with its disk; the
    answer lists the dirs to delete and the jobs to stop."""
    with bound(agent_id=agent.id), transaction.atomic():
        agent = agent_locked_online(agent.id)
        agent_record_heartbeat(
            agent, warm_dirs=[d.model_dump() for d in heartbeat.warm_dirs],
            provider_cache=heartbeat.provider_cache.model_dump() if heartbeat.provider_cache is not None else None,
            warm_plan_workspaces=heartbeat.warm_plan_workspaces,
        )
        jobs_renew_leases(agent=agent, job_ids=heartbeat.running_jobs)
        for job in jobs_ack_reported(agent=agent, job_ids=heartbeat.running_jobs):
            with bound(job_id=job.id, run_id=job.task_id):
                log.info("apply job %s acknowledged by %s's heartbeat", job.id, agent.name)
                run_apply_acked(_task_locked(job.task_id))
        for job_id in jobs_missed_by_heartbeat(agent=agent, job_ids=heartbeat.running_jobs):
            job_lost(job_id=job_id, why=f"{agent.name} does not report it in its heartbeats (it never got the job, "
                                        "or no longer has it)")
        release = warm_dirs_reconcile(agent, {d.task for d in heartbeat.warm_dirs}, grace=True)
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
        with bound(agent_id=agent_id), transaction.atomic(), rows_batched():
            agent = agent_locked_online(agent_id)
            pool_id = agent.pool_id
            slot = slot_idle_of_agent(agent.id)
            if slot is None:
                break
            assigned = job_claim(agent=agent, slot=slot)
            if assigned is None:
                break
            others_queued = getattr(assigned.job, "others_queued", True)
            with bound(job_id=assigned.job.id, run_id=assigned.task.id):
                taken = _on_assigned(assigned)
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


def _on_assigned(assigned: Assigned) -> bool:
    """Move the run on for a job an agent just took; False: the job was not needed."""
    job, task, agent = assigned.job, assigned.task, assigned.slot.agent
    if job.kind == JobKind.PLAN:
        run_plan_started(task, agent)
    elif job.kind == JobKind.WARMUP:
        if task.status != RunStatus.APPLY_PENDING or task.warmup_status not in (WarmupStatus.NONE, WarmupStatus.EXPIRED):
            job_transition(job, JobStatus.CANCELLED, message="the run no longer needs a warmup")
            slot_transition(assigned.slot, SlotState.IDLE, message="warmup not needed")
            return False
        warmup_started(task, agent)
    else:
        # A cold apply: a warm dir elsewhere is of no use to this agent. (The run becomes
        # `applying` when the agent acknowledges the job, see job_log.)
        warmup_release(task, message=f"the apply went cold on {agent.name}")
    return True


def job_log(*, agent: Agent, job_id: int, fence: int, post: LogPost) -> None:
    """A log post. The job and its run are locked once, with the workspace's sensitive values
    and the chunk's idempotency check (job_locked_with_run, as a result does), and the run's
    row is written once: the warm apply's first line comes with its start and acknowledgement
    while terraform is making its state calls to this same web process, so the post must be
    cheap (one query to lock and read, the chunk, the job's ack, one UPDATE of the run)."""
    with bound(agent_id=agent.id, job_id=job_id), transaction.atomic(), rows_batched():
        locked = job_locked_with_run(job_id, agent, fence, log_seq=post.seq)
        appended = job_append_log(agent=agent, job_id=job_id, fence=fence, post=post, locked=locked,
                                  defer_saves=True)
        if appended is not None and appended.acked_now:
            appended.job.save(update_fields=["acked_at"])
            run_apply_acked(appended.task, save=False)
        locked[1].save_pending()


# Plans up to this size are hashed while the result holds its locks (well under a millisecond).
PLAN_HASHED_UNDER_LOCK_BYTES = 1024 * 1024


def job_result(*, agent: Agent, job_id: int, fence: int, result: JobResult, plan: bytes | None = None) -> FinishReply:
    """Record a job's result and move its run on; the answer says whether to keep the dir.
    The result may carry the job's last log text and (a plan job's) the plan, `plan` its
    decoded bytes: stored first, in the same transaction, so the run never shows a result
    without them."""
    follow_ups: list[Callable[[], Any]] = []
    # Whose job it is comes first (another agent learns nothing more), then the plan's size
    # and sha256: a large plan is hashed before the locks are taken, a small one under them
    # (one query fewer on the way to apply_pending).
    check_first = result.plan is not None and len(plan or b"") > PLAN_HASHED_UNDER_LOCK_BYTES
    if check_first:
        job_running(job_id, agent, fence)
        plan_check(plan or b"", result.plan.sha256)
    with bound(agent_id=agent.id, job_id=job_id) as bind, transaction.atomic(), rows_batched():
        # The job and its run, locked once (the job's lock before the run's) for the log, the
        # plan and the result alike.
        locked = job_locked_with_run(job_id, agent, fence, log_seq=result.log.seq if result.log is not None else None)
        job, task = locked
        if result.plan is not None and not check_first:
            plan_check(plan or b"", result.plan.sha256)
        # Their fields on the run are written by the run's next save in this transaction (the
        # run moves on below), or by save_pending at the end: one UPDATE of the run, not three.
        if result.log is not None:
            job_append_log(agent=agent, job_id=job_id, fence=fence, post=result.log, locked=locked, defer_saves=True)
        if result.plan is not None:
            up = result.plan
            job_store_plan(job, data=plan or b"", sha256=up.sha256, summary=up.summary, has_changes=up.has_changes,
                           task=task, defer_saves=True)
        finished = job_finish(agent=agent, job_id=job_id, fence=fence, result=result, locked=locked)
        bind(run_id=finished.job.task_id)
        if result.warm_plan_kept:
            # Now, not at the next heartbeat: the workspace's next plan prefers this agent.
            workspace_id = finished.task.workspace_id
            follow_ups.append(lambda: agent_add_warm_plan(agent, workspace_id=workspace_id))
        kind = finished.job.kind
        handed: list[dict[str, Any]] = []  # jobs for this agent, in this answer (FinishReply.jobs)
        if kind == JobKind.PLAN:
            ended = run_plan_finished(finished)
            keep = ended.keep_dir
            follow_ups += ended.follow_ups
            if ended.handed is not None:
                handed.append(ended.handed)
        elif kind == JobKind.WARMUP:
            warm = warmup_job_finished(finished)
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
            run_apply_finished(finished)
            keep = False
        # The agent's slot may be free now: wake its long-poll to take queued work at once.
        agent_id_ = agent.id
        follow_ups.append(lambda: wakeups.wake_agent(agent_id_))
        transaction.on_commit(lambda: _run_follow_ups(follow_ups))
        task.save_pending()
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


def job_lost(*, job_id: int, why: str) -> bool:
    """A running job's agent died or stopped reporting it: abandon the job and move its run
    on. Returns False when the job had already moved on."""
    with bound(job_id=job_id) as bind, transaction.atomic():
        job = job_locked(job_id)
        bind(run_id=job.task_id)
        if job.status != JobStatus.RUNNING:
            return False
        log.info("%s job %s of run %s lost: %s", job.kind, job.id, job.task_id, why)
        task = _task_locked(job.task_id)
        abandoned = job_abandon(job, why=why, avoid_agent=True)
        if job.kind == JobKind.WARMUP:
            warmup_job_lost(task, job)
        else:
            run_job_lost(task, job, requeued=abandoned.requeued, why=why)
        pool_id = job.pool_id
        transaction.on_commit(lambda: (warmups_ensure(pool_id=pool_id), pool_wake(pool_id)))
    return True


def agent_set_offline(*, agent_id: int, reason: str) -> bool:
    """Declare an agent dead. Its running plans are re-queued, its running warmups count as
    failed attempts, its running applies become errored (an interrupted apply may have
    half-written state, so it is never re-run automatically), and its reservations are
    released and warmed up elsewhere."""
    with bound(agent_id=agent_id), transaction.atomic():
        agent = Agent.objects.select_for_update(no_key=True, of=("self",)).filter(id=agent_id, status=AgentStatus.ONLINE).first()
        if agent is None:
            return False
        log.info("agent %s offline: %s", agent.name, reason)
        agent_set_status(agent, AgentStatus.OFFLINE, reason=reason)
        pool_id = agent.pool_id
        for job_id in jobs_running_of_agent(agent_id=agent.id):
            job_lost(job_id=job_id, why=f"{agent.name} went offline ({reason})")
        # Each run's row before its slot, the order Confirm takes them in.
        reserved = Slot.objects.filter(agent=agent, state=SlotState.RESERVED).values_list("task_id", flat=True)
        for task_id in list(reserved):
            warmup_release(_task_locked(task_id), message=f"{agent.name} went offline ({reason}); warming up elsewhere")
        for slot in Slot.objects.select_for_update(no_key=True, of=("self",)).select_related("agent").filter(
            agent=agent, state=SlotState.RUNNING
        ):  # a job that was not `running` any more
            slot_transition(slot, SlotState.IDLE, message=f"{agent.name} went offline")
        transaction.on_commit(lambda: (warmups_ensure(pool_id=pool_id), pool_wake(pool_id)))
    return True


def pool_token_rotate(*, pool: AgentPool, actor: Any) -> str:
    """A new pool token; the old one stops working, and so do the tokens of the agents that
    registered with it, in the same transaction (a registration racing it loses:
    pool_rotate_token). Then they are taken offline (their work is handled as for any
    offline agent) and must register again with the new token. Returns the new token
    (shown once)."""
    with transaction.atomic():
        token, agent_ids = pool_rotate_token(pool=pool)
        audit_record(actor=actor, action="pool.rotate_token", obj=pool, data={"agents_revoked": len(agent_ids)})
    # Their tokens are dead already: what remains is what any agent's death means.
    for agent_id in agent_ids:
        agent_set_offline(agent_id=agent_id, reason="its pool's token was rotated")
    return token


# --- the control loop --------------------------------------------------------------------


def _control_plane_gap() -> float:
    """Seconds after which a missing web tick or sweep means the platform could not hear."""
    return 3 * settings.IAC_SWEEP_INTERVAL_SECONDS


def _mark(row: int, at: Any) -> None:
    SweepHeartbeat.objects.bulk_create(
        [SweepHeartbeat(id=row, finished_at=at)], update_conflicts=True, unique_fields=["id"], update_fields=["finished_at"],
    )


def web_alive(*, starting: bool = False) -> None:
    """A web process ticks (tasks_app/sweep_fallback.py). When it starts, or when no web
    process ticked for a while (all were down), agents could not reach the platform until
    now: their silence starts counting again (see step_offline)."""
    now = timezone.now()
    seen = SweepHeartbeat.objects.filter(id=SweepHeartbeat.WEB_SEEN).values_list("finished_at", flat=True).first()
    if starting or seen is None or (now - seen).total_seconds() > _control_plane_gap():
        _mark(SweepHeartbeat.HEARD_SINCE, now)
    _mark(SweepHeartbeat.WEB_SEEN, now)


def sweep_resumed() -> None:
    """A sweep after a gap (the database was down, or nothing swept): agents' heartbeats
    could not be recorded meanwhile either."""
    rows = dict(SweepHeartbeat.objects.filter(id__in=[SweepHeartbeat.CELERY, SweepHeartbeat.WEB])
                .values_list("id", "finished_at"))
    if rows and (timezone.now() - max(rows.values())).total_seconds() > _control_plane_gap():
        _mark(SweepHeartbeat.HEARD_SINCE, timezone.now())


def step_offline() -> list[int]:
    """Agents silent for IAC_AGENT_OFFLINE_AFTER_SECONDS go offline, counting only time in
    which the platform could hear them: nobody, while no web process ticks (web is down,
    restarting or being deployed), and nobody silent for less than the timeout since web came
    back or the sweep resumed (a database outage). Without web ticks recorded at all (the web
    fallback thread off) every silence counts."""
    timeout = settings.IAC_AGENT_OFFLINE_AFTER_SECONDS
    if not _heard_for(timeout):
        return []
    return [a for a in agents_silent() if agent_set_offline(agent_id=a, reason=f"no heartbeat for {timeout:g}s")]


def _heard_for(seconds: float) -> bool:
    """Whether agents could have reached the platform for the last `seconds`: a web process
    is up (it ticked lately, or no tick was ever recorded) and has been since at least then.
    Silence (a missing heartbeat, a lease not renewed) proves nothing otherwise."""
    now = timezone.now()
    rows = dict(SweepHeartbeat.objects.filter(id__in=[SweepHeartbeat.WEB_SEEN, SweepHeartbeat.HEARD_SINCE])
                .values_list("id", "finished_at"))
    seen, heard_since = rows.get(SweepHeartbeat.WEB_SEEN), rows.get(SweepHeartbeat.HEARD_SINCE)
    if seen is not None and (now - seen).total_seconds() > _control_plane_gap():
        return False  # no web process is up: agents cannot reach us
    return heard_since is None or (now - heard_since).total_seconds() >= seconds


def step_leases() -> list[int]:
    """Jobs whose lease ran out, and applies pushed to an agent that did not take them in
    time: they go back to the pool (or fail), each in its own transaction.

    An unacknowledged apply goes elsewhere only when the server can tell it never reached
    its agent: its push is still waiting in Redis, and taking it back (atomically, against
    the agent's own take) guarantees the agent never gets it. A push already taken may be
    running with its ack lost on the way: the agent's heartbeats decide (agent_heartbeat)."""
    timeout = settings.IAC_TARGET_CLAIM_TIMEOUT_SECONDS
    lost = []
    # A lease is renewed by heartbeats: like silence (step_offline), one that ran out while
    # agents could not reach the platform (web down, the database down) proves nothing.
    expired = jobs_lease_expired() if _heard_for(settings.IAC_AGENT_OFFLINE_AFTER_SECONDS) else []
    for job_id in expired:
        with transaction.atomic():
            job = job_locked(job_id)
            name = job.agent.name if job.agent else "its agent"
            if job_lost(job_id=job_id, why=f"the lease of {job.kind} job {job.id} expired ({name} stopped reporting it)"):
                lost.append(job_id)
    for job_id, agent_id in jobs_unacked_overdue():
        if agent_id is None or not wakeups.take_back(agent_id, job_id):
            continue
        with transaction.atomic():
            job = job_locked(job_id)
            name = job.agent.name if job.agent else "its agent"
            if job_lost(job_id=job_id, why=f"{name} did not take the apply within {timeout:g}s"):
                lost.append(job_id)
    return lost


def step_warmup_expiry() -> list[int]:
    pools = {p for p in (warmup_expire(task_id=t) for t in warmups_expired()) if p is not None}
    for pool_id in pools:
        warmups_ensure(pool_id=pool_id)
    return sorted(pools)


def step_warmups() -> list[int]:
    created: list[int] = []
    for pool_id in AgentPool.objects.filter(warm_apply=True).values_list("id", flat=True):
        created += warmups_ensure(pool_id=pool_id)
    return created


def step_make_room() -> list[int]:
    released: list[int] = []
    for pool_id in AgentPool.objects.values_list("id", flat=True):
        released += pool_make_room(pool_id=pool_id)
    return released


def step_queues() -> list[int]:
    started: list[int] = []
    for ws_id in set(Task.objects.filter(status=RunStatus.PENDING).values_list("workspace_id", flat=True)):
        started += runs_start_next(workspace_id=ws_id)
    return started


def step_wake_queued() -> int:
    """Pools with claimable work get a wake-up: a held apply whose wait ran out, or a job
    whose wake-up was lost (Redis restarted), is taken without waiting for a long-poll."""
    pools = set(
        Task.objects.filter(status__in=[RunStatus.PLAN_QUEUED, RunStatus.APPLY_QUEUED])
        .values_list("workspace__pool_id", flat=True)
    )
    pools = {p for p in pools if not pool_freeze(p).frozen}  # a frozen pool's agents take nothing
    for pool_id in pools:
        pool_wake(pool_id)
    return len(pools)


def step_auto_apply() -> list[int]:
    """Auto-apply runs are confirmed in the plan's result; a run that still waits (the
    confirm failed) is confirmed here."""
    confirmed = []
    for task_id in runs_auto_apply_due():
        if pool_freeze(Task.objects.filter(id=task_id).values_list("workspace__pool_id", flat=True).get()).frozen:
            continue  # confirmed once the window ends (Confirm is refused while frozen)
        try:
            if not run_confirm(task_id=task_id, actor="auto-apply").refused:
                confirmed.append(task_id)
        except PlatformError:
            log.info("auto-apply of run %s: not confirmable now", task_id, exc_info=True)
    return confirmed


def step_apply_jobs() -> list[int]:
    """A confirmed run always has its apply job: one that has none gets it (cold), whatever
    happened between Confirm's commit and what was meant to follow it."""
    return [t for t in runs_confirmed_without_apply() if run_apply_job_restore(task_id=t)]


def _bound_message(job: Any) -> str:
    pool = job.pool
    if job.kind == JobKind.PLAN:
        return (f"the plan ran past its {duration_text(pool.plan_timeout_seconds)} bound (pool {pool.name}); "
                f"terraform was interrupted")
    return (f"the apply ran past its {duration_text(pool.apply_timeout_seconds)} bound (pool {pool.name}); "
            f"terraform was interrupted (SIGINT) so that it stops at a safe point, saves the state and releases "
            f"its lock; SIGKILL follows only after {duration_text(pool.apply_kill_grace_seconds)}")


def step_bounds() -> dict[str, list[int]]:
    """Running plans and applies past their pool's bound: the agent is told to stop them
    (SIGINT, then SIGKILL after the kill grace: the plan's short, the apply's long) and the
    run ends `errored` with the bound's message when the job ends. A job its agent does not
    stop within its grace plus the offline timeout is given up on (`job_lost`: the slot,
    the state lock and the run are freed)."""
    now = timezone.now()
    stopped, killed, given_up = [], [], []
    for job_id in jobs_running_past_bound(now=now):
        with bound(job_id=job_id), transaction.atomic():
            job = job_locked(job_id)
            if job.status != JobStatus.RUNNING or job.timed_out_at is not None:
                continue
            pool = job.pool
            grace = pool.plan_kill_grace_seconds if job.kind == JobKind.PLAN else pool.apply_kill_grace_seconds
            message = _bound_message(job)
            log.info("%s job %s of run %s: %s", job.kind, job.id, job.task_id, message)
            job_time_out(job, grace=grace, message=message)
            run_note(_task_locked(job.task_id), message=message)  # the run ends when the job does
            stopped.append(job_id)
    for job_id in jobs_timed_out_to_kill(now=now):
        with transaction.atomic():
            job = job_locked(job_id)
            if job.status == JobStatus.RUNNING and not job.force_cancel:
                job_kill(job)
                killed.append(job_id)
    offline = settings.IAC_AGENT_OFFLINE_AFTER_SECONDS
    for job_id in jobs_timed_out_unstopped(now=now):
        job = Job.objects.select_related("agent").get(id=job_id)
        name = job.agent.name if job.agent else "its agent"
        why = (f"{name} did not stop it within {duration_text(job.cancel_grace_seconds or 0)} + "
               f"{duration_text(offline)}: the server gave up on it")
        if job_lost(job_id=job_id, why=why):
            given_up.append(job_id)
    return {"stopped": stopped, "killed": killed, "given_up": given_up}


def step_no_agent() -> list[int]:
    """A queued plan or apply whose pool has had no online agent that could take it for
    longer than the pool's no-agent bound: the run errors, saying so."""
    now = timezone.now()
    errored = []
    pools: dict[tuple[int, str], NoAgent | None] = {}  # one look per pool and terraform version
    for waiting in jobs_waiting_for_an_agent():
        key = (waiting.pool_id, waiting.terraform_version)
        if key not in pools:
            pools[key] = pool_no_agent(*key)
        if pools[key] is None:
            continue
        # A frozen pool's no-agent bound is suspended (None), and counts from the freeze's end.
        since = job_no_agent_since(waiting, pools[key])
        limit = waiting.pool.no_agent_timeout_seconds
        if since is None or since + timedelta(seconds=limit) > now:
            continue
        with bound(job_id=waiting.id, run_id=waiting.task_id), transaction.atomic():
            job = job_locked(waiting.id)
            task = _task_locked(job.task_id)
            if job.status != JobStatus.QUEUED or job_no_agent_since(job) is None:
                continue
            pool = task.workspace.pool
            version = f" with terraform {job.terraform_version}" if job.terraform_version else ""
            message = f"no agent of pool {pool.name}{version} came online within {duration_text(limit)}"
            log.info("run %s: %s", task.id, message)
            run_no_agent(task, job, message=message)
            errored.append(task.id)
    return errored


def step_apply_pending_bound() -> list[int]:
    """Runs waiting for Confirm past their pool's (optional) apply_pending bound are discarded."""
    now = timezone.now()
    return [t for t in runs_apply_pending_past_bound(now=now) if run_expire_pending(task_id=t, now=now)]


# --- freeze windows ----------------------------------------------------------------------


def pool_freeze_enter(pool_id: int, freeze: Freeze) -> dict[str, list[int]]:
    """Undo what a frozen pool must not have, each item in its own transaction. Idempotent:
    a sweep repeats it while the pool is frozen and finds nothing left to do. Reservations
    are released and queued warmups cancelled (the runs are warmed up again after the
    window: the `warmups` step, once dispatch is allowed again); running plans and warmups
    are told to stop through their agent's heartbeat (SIGINT, SIGKILL after the pool's plan
    kill grace) and end with the reason; running applies finish: killing terraform mid-apply
    leaves half-changed infrastructure and a held state lock (docs/architecture.md). Idle
    pods go because the autoscaler wants none while frozen."""
    assert freeze.until is not None and freeze.window is not None
    pool = AgentPool.objects.get(id=pool_id)
    entered = f"the pool entered freeze window '{freeze.window.name}' until {moment_text(freeze.until)}"
    released = warmups_release_for_freeze(pool_id=pool_id, message=f"released: {entered}; warmed up after it")
    with transaction.atomic():
        dropped = jobs_cancel_queued_of_pool(pool_id=pool_id, kind=JobKind.WARMUP, message=f"cancelled: {entered}")
    stopped = []
    for job_id in jobs_to_stop_for_freeze(pool_id=pool_id):
        with bound(job_id=job_id), transaction.atomic():
            job = job_locked(job_id)
            if job.status != JobStatus.RUNNING or job.cancel_requested or job.kind == JobKind.APPLY:
                continue
            message = f"cancelled: {entered}"
            log.info("%s job %s of run %s: %s", job.kind, job.id, job.task_id, message)
            job_stop(job, message=message, grace=pool.plan_kill_grace_seconds)
            if job.kind == JobKind.PLAN:
                run_note(_task_locked(job.task_id), message=message)  # the run ends when the job does
            stopped.append(job_id)
    return {"released": released, "warmups_cancelled": dropped, "stopped": stopped}


def step_freeze() -> dict[int, dict[str, list[int]]]:
    """Pools in a freeze window: what entering it undoes (pool_freeze_enter). Leaving one
    needs no step of its own: claims, Confirm and warmups are allowed again, the `warmups`
    step re-warms the apply_pending runs and `wake` wakes the pool for its queued runs."""
    now = timezone.now()
    done: dict[int, dict[str, list[int]]] = {}
    for pool_id in sorted(set(FreezeWindow.objects.filter(enabled=True).values_list("pool_id", flat=True))):
        freeze = pool_freeze(pool_id, now)
        if freeze.frozen:
            acted = pool_freeze_enter(pool_id, freeze)
            if any(acted.values()):
                done[pool_id] = acted
    return done


def pool_freeze_changed(*, pool_id: int) -> None:
    """A window of the pool was created, changed, deleted or lifted (after commit): act now
    rather than at the next sweep: enter the freeze, or re-warm and wake the pool."""
    freeze = pool_freeze(pool_id)
    if freeze.frozen:
        pool_freeze_enter(pool_id, freeze)
        return
    warmups_ensure(pool_id=pool_id)
    pool_wake(pool_id)


SWEEP_STEPS: list[tuple[str, Callable[[], Any]]] = [
    ("offline", step_offline),
    ("leases", step_leases),
    ("bounds", step_bounds),  # plans and applies past their bound; jobs their agent will not stop
    ("freeze", step_freeze),  # pools in a freeze window: reservations released, plans and warmups stopped
    ("no_agent", step_no_agent),  # queued work no agent came online for
    ("apply_pending_bound", step_apply_pending_bound),
    ("warmup_expiry", step_warmup_expiry),
    ("warmups", step_warmups),
    ("auto_apply", step_auto_apply),
    ("apply_jobs", step_apply_jobs),  # a confirmed run without its apply job gets one
    ("make_room", step_make_room),
    ("queues", step_queues),
    ("wake", step_wake_queued),
    ("retention", step_retention),  # plan files and logs past IAC_RETENTION_*_DAYS
]

SWEEP_LOCK = 0x1AC5EE9  # Postgres advisory lock id: one sweep at a time across workers


def sweep(steps: list[tuple[str, Callable[[], Any]]] | None = None, *,
          runner: int = SweepHeartbeat.CELERY) -> dict[str, Any]:
    """The control loop tick. Each step is independent: a failing one is logged and
    reported, and the others still run. `runner` names whose heartbeat row it completes
    (Celery's, or a web process's fallback tick: tasks_app/sweep_fallback.py)."""
    with try_advisory_lock(SWEEP_LOCK) as got:
        if not got:
            return {"skipped": True}
        results: dict[str, Any] = {}
        sweep_resumed()
        for name, step in steps or SWEEP_STEPS:
            try:
                results[name] = step()
            except Exception as exc:  # noqa: BLE001 - one broken step must not stop the loop
                log.exception("sweep step %s failed", name)
                results[name] = f"error: {exc}"
        # /healthz/ready reads this to know the worker and beat are alive (one upsert).
        _mark(runner, timezone.now())
    return results
