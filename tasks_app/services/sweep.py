"""The control loop: the sweep, ticked by Celery beat (or a web process's fallback thread),
and its steps, each its own function enforcing its own bound (silent agents, expired leases,
jobs past their pool's bound, queued work no agent came for, runs waiting for Confirm,
expired warm dirs, freeze windows) or restoring what a lost follow-up left undone (warmups,
auto-apply, apply jobs, queues, wake-ups). Above agent_reports: a lost job or a silent agent
is handled as when an agent reports it (job_lost, agent_set_offline).

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

from agents_app.models import AgentPool, FreezeWindow
from agents_app.protocol import JobKind, JobStatus
from agents_app.services.agents import agents_silent, pool_wake
from agents_app.services.freeze import Freeze, moment_text, pool_freeze
from iacplatform import wakeups
from iacplatform.errors import PlatformError
from iacplatform.logs import bound
from iacplatform.pglock import try_advisory_lock
from iacplatform.unit_of_work import unit_of_work
from tasks_app.dispatch.agent_reports import agent_set_offline, job_lost, task_locked
from tasks_app.dispatch.job_cancels import (
    job_kill,
    job_stop,
    job_time_out,
    jobs_cancel_queued_of_pool,
    jobs_running_past_bound,
    jobs_timed_out_to_kill,
    jobs_timed_out_unstopped,
    jobs_to_stop_for_freeze,
)
from tasks_app.dispatch.jobs import job_locked, jobs_lease_expired, jobs_unacked_overdue
from tasks_app.dispatch.models import Job
from tasks_app.dispatch.warmups import (
    pool_make_room,
    warmup_expire,
    warmups_ensure,
    warmups_expired,
    warmups_release_for_freeze,
)
from tasks_app.models import SweepHeartbeat, Task
from tasks_app.selectors import NoAgent, duration_text, job_no_agent_since, jobs_waiting_for_an_agent, pool_no_agent
from tasks_app.services.policy_checks import policy_check_run, runs_policy_check_overdue
from tasks_app.services.retention import step_retention
from tasks_app.services.runs import (
    run_apply_job_restore,
    run_confirm,
    run_expire_pending,
    run_no_agent,
    run_note,
    runs_apply_pending_past_bound,
    runs_auto_apply_due,
    runs_confirmed_without_apply,
    runs_start_next,
)
from tasks_app.states import RunStatus

log = logging.getLogger(__name__)


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


def step_policy_checks() -> list[int]:
    """Runs whose policy check never ran (its queued task was lost) are checked here, each
    bounded by the evaluator's time bound."""
    checked = []
    for task_id in runs_policy_check_overdue():
        with bound(run_id=task_id):
            if policy_check_run(task_id=task_id):
                checked.append(task_id)
    return checked


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
        with bound(job_id=job_id), unit_of_work() as uow:
            job = job_locked(job_id)
            if job.status != JobStatus.RUNNING or job.timed_out_at is not None:
                continue
            pool = job.pool
            grace = pool.plan_kill_grace_seconds if job.kind == JobKind.PLAN else pool.apply_kill_grace_seconds
            message = _bound_message(job)
            log.info("%s job %s of run %s: %s", job.kind, job.id, job.task_id, message)
            job_time_out(job, uow=uow, grace=grace, message=message)
            run_note(task_locked(job.task_id), message=message)  # the run ends when the job does
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
        with bound(job_id=waiting.id, run_id=waiting.task_id), unit_of_work() as uow:
            job = job_locked(waiting.id)
            task = task_locked(job.task_id)
            if job.status != JobStatus.QUEUED or job_no_agent_since(job) is None:
                continue
            pool = task.workspace.pool
            version = f" with terraform {job.terraform_version}" if job.terraform_version else ""
            message = f"no agent of pool {pool.name}{version} came online within {duration_text(limit)}"
            log.info("run %s: %s", task.id, message)
            run_no_agent(task, job, uow=uow, message=message)
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
    with unit_of_work() as uow:
        dropped = jobs_cancel_queued_of_pool(pool_id=pool_id, uow=uow, kind=JobKind.WARMUP,
                                             message=f"cancelled: {entered}")
    stopped = []
    for job_id in jobs_to_stop_for_freeze(pool_id=pool_id):
        with bound(job_id=job_id), unit_of_work() as uow:
            job = job_locked(job_id)
            if job.status != JobStatus.RUNNING or job.cancel_requested or job.kind == JobKind.APPLY:
                continue
            message = f"cancelled: {entered}"
            log.info("%s job %s of run %s: %s", job.kind, job.id, job.task_id, message)
            job_stop(job, uow=uow, message=message, grace=pool.plan_kill_grace_seconds)
            if job.kind == JobKind.PLAN:
                run_note(task_locked(job.task_id), message=message)  # the run ends when the job does
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
    ("policy_checks", step_policy_checks),  # a policy check whose queued task was lost
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
