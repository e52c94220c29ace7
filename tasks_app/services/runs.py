"""The run lifecycle: one function per state change, the only writers of Task.status.

Each locks the task row (select_for_update), checks the transition table in states.py,
writes a TaskEvent, and defers side effects (wake-ups, follow-up work) to on_commit so an
agent never sees a job whose transaction has not committed. Runs sit above the dispatch
layer (warmups, jobs, slots): they call it, it never calls them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from agents_app.models import Agent
from agents_app.protocol import JobKind, JobOutcome, JobStatus, PlanMode, SlotState, WarmupStatus
from agents_app.services.agents import pool_wake
from agents_app.services.freeze import freeze_text, pool_freeze
from iacplatform import wakeups
from iacplatform.celery import app as celery_app
from iacplatform.errors import Conflict, Invalid, PlatformError, invalid_field
from iacplatform.permissions import Action, require
from iacplatform.unit_of_work import UnitOfWork, unit_of_work
from tasks_app import events
from tasks_app.dispatch.job_cancels import jobs_cancel_queued, jobs_request_cancel
from tasks_app.dispatch.job_payloads import (
    PayloadReads,
    payload_set_variables,
    payload_variables,
    run_variables_resolved,
    with_payload_variables,
)
from tasks_app.dispatch.jobs import Finished, job_abandon, job_assign, job_create, job_locked, run_jobs_locked
from tasks_app.dispatch.models import Job
from tasks_app.dispatch.slots import slot_transition
from tasks_app.dispatch.warmups import (
    confirm_target,
    pool_make_room,
    warmup_release,
    warmup_reserve,
    warmups_ensure,
)
from tasks_app.models import ConfigurationVersion, PolicyCheck, StateVersion, Task, TaskEvent, Workspace
from tasks_app.selectors import duration_text, run_apply_pending_since, state_serial_current, workspace_has_policies
from tasks_app.services.audit import audit_record
from tasks_app.states import (
    BLOCKING,
    FINAL,
    Operation,
    PolicyStatus,
    RunStatus,
    check_policy_transition,
    check_transition,
)
from tasks_app.workflows.health import drift_check_finished
from tasks_app.workflows.notifications import run_notify

log = logging.getLogger(__name__)


def _actor_label(actor: Any) -> str:
    return getattr(actor, "username", None) or (actor if isinstance(actor, str) else "system")


def run_transition(
    task: Task, to: RunStatus, *, uow: UnitOfWork, message: str = "", actor: Any = "system", event_only: bool = False,
) -> None:
    """Move a locked task to `to`: the whole row is saved by `uow` (merged with the unit's
    other saves of the run: a result moves its run and stores its log and plan in one
    UPDATE), with a TaskEvent, the run's wake-up and the live updates. `message` goes on the
    TaskEvent and (unless `event_only`) becomes the run's message."""
    check_transition(task.status, to)
    uow.insert(TaskEvent(task=task, from_status=task.status, to_status=to, message=message, actor=_actor_label(actor)))
    task.status = to
    if message and not event_only:
        task.message = message
    # Wakes the API's long-polls on this run (`GET /runs/<id>/?wait=`); best effort, after commit.
    # The new status rides along: a long-poll waiting for another one need not check the run.
    task_id = task.id
    uow.publish(wakeups.run_channel(task_id), f"status:{to}", "a run wake-up")
    events.run_changed(uow, task_id=task_id, workspace_id=task.workspace_id, status=to)
    if to == RunStatus.APPLIED:
        run_triggers_fire(task, uow=uow)
    run_notify(task, to, uow=uow)
    drift_check_finished(task, to, uow=uow)
    if to in FINAL:
        task.finished_at = timezone.now()
        warmup_release(task, uow=uow, message=f"run {task.id} is {to}")
        # Final runs free the workspace queue.
        workspace_id = task.workspace_id
        uow.on_commit(lambda: runs_start_next(workspace_id=workspace_id))
    uow.save(task, *(f.attname for f in Task._meta.concrete_fields if not f.primary_key))


def policy_transition(task: Task, to: PolicyStatus, *, uow: UnitOfWork, message: str = "",
                      actor: Any = "system") -> None:
    """Move a locked run's policy check to `to` (the only writer of Task.policy_status): a
    TaskEvent in the run's timeline (its status unchanged) and the live update; saved by
    `uow` with the run's other changes. The check's details are its PolicyCheck."""
    check_policy_transition(task.policy_status, to)
    task.policy_status = to
    uow.insert(TaskEvent(task=task, from_status=task.status, to_status=task.status, actor=_actor_label(actor),
                         message=message or f"policy check: {to}"))
    uow.save(task, "policy_status")
    events.run_changed(uow, task_id=task.id, workspace_id=task.workspace_id, status=task.status)


def run_create(*, workspace: Workspace, operation: str, actor: Any, message: str = "",
               mode: str = PlanMode.NORMAL, targets: Sequence[str] = (), replace: Sequence[str] = (),
               configuration_version: ConfigurationVersion | None = None, auto_apply: bool = False,
               variables: dict[str, str] | None = None, triggered_by: Task | None = None,
               drift_check: bool = False) -> Task:
    """Queue a run. `mode`, `targets` and `replace` become terraform plan's -destroy /
    -refresh-only, -target=… and -replace=… (agents_app.protocol.PlanOptions). Of the
    workspace's latest configuration unless `configuration_version` names one (the TFE API's
    runs do). `auto_apply`: applies once planned, without a Confirm; `variables`: terraform
    variables of this run only, over the workspace's."""
    if operation not in Operation.values:
        raise Invalid(f"operation must be one of {', '.join(Operation.values)}")
    if mode not in PlanMode.__members__.values():
        raise invalid_field("mode", f"must be one of {', '.join(PlanMode)}")
    if replace and mode != PlanMode.NORMAL:
        raise invalid_field("replace", f"terraform cannot replace resources in a {mode} plan")
    # (Not its archive: the run only points at it.) A speculative plan's configuration (the
    # TFE API's, which `plan` may upload) never becomes the one the workspace applies.
    cv = configuration_version or (
        ConfigurationVersion.objects.filter(workspace=workspace, speculative=False)
        .exclude(upload__speculative=True).order_by("-id").only("id").first())
    if cv is None:
        raise Conflict(f"workspace '{workspace.name}' has no configuration yet: upload one first")
    if cv.workspace_id != workspace.id:
        raise invalid_field("configuration_version", f"not a configuration of workspace '{workspace.name}'")
    with unit_of_work() as uow:
        # The start after commit (it queues the plan and wakes the agents), before the live
        # pages' updates: those are Redis round trips the plan need not wait for.
        uow.on_commit(lambda: runs_start_next(workspace_id=workspace.id))
        task = Task.objects.create(
            workspace=workspace,
            configuration_version=cv,
            operation=operation,
            created_by=actor if getattr(actor, "is_authenticated", False) else None,
            message=message,
            plan_mode=mode,
            plan_targets=list(targets),
            plan_replace=list(replace),
            auto_apply=auto_apply,
            run_variables=dict(variables or {}),
            triggered_by=triggered_by,
            drift_check=drift_check,
        )
        TaskEvent.objects.create(task=task, to_status=RunStatus.PENDING, actor=_actor_label(actor), message=message)
        if getattr(actor, "is_authenticated", False):  # a person queued it (not auto-apply, not a test)
            options = {"mode": mode, "targets": list(targets), "replace": list(replace)}
            audit_record(actor=actor, action="run.create", obj=task, data={"operation": operation, **options})
        events.run_changed(uow, task_id=task.id, workspace_id=workspace.id, status=RunStatus.PENDING)
    return task


def run_triggers_fire(task: Task, *, uow: UnitOfWork) -> list[Task]:
    """The run (locked) is becoming `applied`: when its apply changed the workspace's state,
    queue a plan_and_apply on each workspace that lists this one as a run trigger source, in
    this transaction (a trigger is never lost between the apply and its follow-ups), naming
    the run as the reason. A consumer without a configuration yet is skipped, and says so in
    the source run's timeline."""
    if not StateVersion.objects.filter(task=task).exists():
        return []
    queued = []
    source = task.workspace
    for consumer in source.trigger_consumers.order_by("id"):
        try:
            queued.append(run_create(
                workspace=consumer, operation=Operation.PLAN_AND_APPLY, actor="run trigger", triggered_by=task,
                message=f"triggered by run {task.id} of workspace '{source.name}', which applied a change"))
        except Conflict as exc:
            uow.insert(TaskEvent(task=task, from_status=task.status, to_status=task.status, actor="run trigger",
                                 message=f"run trigger to '{consumer.name}' skipped: {exc}"))
    return queued


def runs_start_next(*, workspace_id: int) -> list[int]:
    """Start what the per-workspace queue rule allows; returns the started task ids.

    Plan-only runs neither wait nor block. Runs that can apply are FIFO and exclusive: while
    one is plan_queued / planning / apply_pending / apply_queued / applying, later ones stay
    pending. A started run is `plan_queued` until an agent claims its plan job.
    """
    started: list[int] = []
    with unit_of_work() as uow:
        # After commit the agents are woken before the live pages' updates of the transitions
        # below go out (the unit's sends come after its on_commit work).
        dispatch: list[int] = []
        uow.on_commit(lambda: dispatch and _dispatch_queued(dispatch[0]))
        # The workspace row lock serialises concurrent callers for one workspace.
        ws = Workspace.objects.select_for_update(no_key=True).get(id=workspace_id)
        if ws.locked:
            return started
        pending = Task.objects.select_for_update(no_key=True).filter(workspace=ws, status=RunStatus.PENDING).order_by("id")
        blocked = Task.objects.filter(
            workspace=ws, operation=Operation.PLAN_AND_APPLY, status__in=list(BLOCKING)
        ).exists()
        for task in pending:
            if task.operation == Operation.PLAN_AND_APPLY:
                if blocked:
                    continue
                blocked = True
            run_transition(task, RunStatus.PLAN_QUEUED, uow=uow)
            job_create(uow=uow, task=task, kind=JobKind.PLAN, pool_id=ws.pool_id, terraform_version=ws.terraform_version)
            started.append(task.id)
        if started:
            dispatch.append(ws.pool_id)
    return started


def _dispatch_queued(pool_id: int) -> None:
    """After new work was queued: wake the pool's agents (an idle slot takes it now), then
    make room if the pool is full (and wake them again for the freed slot)."""
    pool_wake(pool_id)
    pool_make_room(pool_id=pool_id)


def run_plan_started(task: Task, agent: Agent, *, uow: UnitOfWork, reads: PayloadReads | None = None) -> None:
    """An agent claimed the run's plan job (task locked); `reads`: what the claim read with
    the locked run (the workspace's current state serial among it)."""
    # The state serial the plan is made against: a different serial at Confirm = stale plan.
    task.base_state_serial = (reads.state_serial if reads is not None and reads.state_serial_read
                              else state_serial_current(task.workspace_id))
    task.terraform_version = agent.terraform_version
    # Where each variable's value came from, as the plan gets them (the run page shows it).
    resolved, _ = run_variables_resolved(task, reads if reads is not None else PayloadReads())
    task.variable_sources = [r.described() for r in resolved]
    run_transition(task, RunStatus.PLANNING, uow=uow, message=f"planning on {agent.name}", event_only=True)


def run_plan_requeued(task: Task, *, uow: UnitOfWork, why: str) -> None:
    """The plan's agent died before the plan finished: the job is queued again."""
    if task.status == RunStatus.PLANNING:
        run_transition(task, RunStatus.PLAN_QUEUED, uow=uow, message=f"{why}; the plan is queued again")


@dataclass(frozen=True)
class PlanEnded:
    keep_dir: bool
    follow_ups: tuple  # run after commit
    handed: dict[str, Any] | None = None  # the auto-apply, for the plan's agent in its answer


def _free(finished: Finished, message: str, *, uow: UnitOfWork) -> None:
    if finished.slot is not None:
        slot_transition(finished.slot, SlotState.IDLE, uow=uow, message=message)


def _cancelled_by_a_person(job: Job) -> bool:
    """Cancel was requested through run_cancel (not the platform's stop at a freeze window,
    which says why in cancel_message, nor a timeout, which sets timed_out_at)."""
    return job.cancel_requested and not job.cancel_message and job.timed_out_at is None


def run_plan_finished(finished: Finished, *, uow: UnitOfWork) -> PlanEnded:
    """A plan job ended (caller's transaction; job, task and slot locked)."""
    task, result = finished.task, finished.result
    outcome = result.outcome
    if finished.job.timed_out_at is not None and outcome != JobOutcome.SUCCEEDED:
        _free(finished, "plan stopped at its bound", uow=uow)
        run_transition(task, RunStatus.ERRORED, uow=uow, message=_stopped_at_bound(finished))
        return PlanEnded(keep_dir=False, follow_ups=())
    if outcome != JobOutcome.CANCELLED and _cancelled_by_a_person(finished.job):
        # A Cancel accepted while the plan ran wins over a result that arrives after it
        # (terraform finished before the SIGINT reached it): the person pressed Cancel, so
        # nothing is kept warm, confirmed or applied, whatever the plan found.
        _free(finished, "plan cancelled", uow=uow)
        run_transition(task, RunStatus.CANCELLED, uow=uow, message=(
            f"cancelled while planning: the plan {'finished' if outcome == JobOutcome.SUCCEEDED else 'ended'} "
            "after the Cancel was accepted; nothing is applied"))
        return PlanEnded(keep_dir=False, follow_ups=())
    if outcome == JobOutcome.CANCELLED:
        _free(finished, "plan cancelled", uow=uow)
        # A plan the platform stopped (its pool entered a freeze window) ends with that reason.
        message = finished.job.cancel_message or result.error or "plan cancelled"
        run_transition(task, RunStatus.CANCELLED, uow=uow, message=message)
        return PlanEnded(keep_dir=False, follow_ups=())
    if outcome != JobOutcome.SUCCEEDED:
        _free(finished, "plan failed", uow=uow)
        run_transition(task, RunStatus.ERRORED, uow=uow, message=result.error or "plan failed")
        return PlanEnded(keep_dir=False, follow_ups=())
    if not task.plan_hash:
        _free(finished, "plan failed", uow=uow)
        run_transition(task, RunStatus.ERRORED, uow=uow, message="the agent finished the plan without uploading plan.out")
        return PlanEnded(keep_dir=False, follow_ups=())
    if not task.has_changes:
        _free(finished, "no changes", uow=uow)
        run_transition(task, RunStatus.PLANNED_NO_CHANGES, uow=uow, message="no changes: nothing to apply")
        return PlanEnded(keep_dir=False, follow_ups=())
    # Policies: the plan is checked in a worker before anyone may confirm it (or, plan-only,
    # before the run is planned); the run waits in policy_checking, keeping its warm dir.
    checking = workspace_has_policies(task.workspace_id)
    if task.operation == Operation.PLAN:
        _free(finished, "plan-only run planned", uow=uow)
        if checking:
            run_transition(task, RunStatus.POLICY_CHECKING, uow=uow)
            policy_transition(task, PolicyStatus.CHECKING, uow=uow)
            return PlanEnded(keep_dir=False, follow_ups=(_policy_check_queue(task.id),))
        run_transition(task, RunStatus.PLANNED, uow=uow)
        return PlanEnded(keep_dir=False, follow_ups=())

    # The run's row is written once, with the warm dir's reservation below, at the unit's flush.
    run_transition(task, RunStatus.POLICY_CHECKING if checking else RunStatus.APPLY_PENDING, uow=uow)
    if checking:
        policy_transition(task, PolicyStatus.CHECKING, uow=uow)
    pool = task.workspace.pool
    follow_ups: list = []
    # A plan that finished as its pool froze keeps no warm dir: nothing is reserved while
    # frozen, and the run is warmed up again after the window.
    frozen = pool_freeze(pool.id).frozen
    keep = result.kept_dir and pool.warm_apply and finished.slot is not None and not frozen
    if keep:
        # The plan's own dir is the warm dir: ready at once, on this agent and slot.
        warmup_reserve(task, finished.slot, uow=uow, message=f"plan dir kept on {finished.slot.agent.name}")
    else:
        _free(finished, "plan done; dir not kept", uow=uow)
        pool_id = pool.id
        follow_ups.append(lambda: warmups_ensure(pool_id=pool_id))
    if checking:
        # Auto-apply, if any, once the check passes (policy_checks.policy_check_run).
        follow_ups.append(_policy_check_queue(task.id))
        return PlanEnded(keep_dir=keep, follow_ups=tuple(follow_ups))
    handed = None
    if (task.workspace.auto_apply or task.auto_apply) and not frozen:
        # Confirmed in the same transaction as the plan's result: no moment where the run
        # is ready but unconfirmed (a full pool could release the reservation then), and
        # no after-commit step to lose. The apply takes the slot the plan just reserved, and
        # goes to the plan's agent in the answer to this very result (no push, no poll).
        uow.flush()  # run_confirm reads the run from the database
        try:
            confirmed = run_confirm(task_id=task.id, actor="auto-apply",
                                    hand_to=finished.slot.agent_id if keep else None)
            handed = confirmed.handed
        except PlatformError:  # the sweep's auto_apply step tries again
            log.warning("auto-apply of run %s failed; the sweep retries", task.id, exc_info=True)
    return PlanEnded(keep_dir=keep, follow_ups=tuple(follow_ups), handed=handed)


def _policy_check_queue(task_id: int) -> Any:
    """After commit: the run's policy check goes to a worker (tasks_app.tasks.policy_check).
    A message that never reaches the broker is made up for by the sweep's policy step."""
    def queue() -> None:
        # By name: the service does not import its edge (tasks_app.tasks).
        celery_app.send_task("tasks_app.tasks.policy_check", args=[task_id])
    return queue


def runs_auto_apply_due() -> list[int]:
    """Runs of auto-apply workspaces waiting for a Confirm nobody will click (not those a
    soft-mandatory policy holds: they wait for the override like any other)."""
    return list(
        Task.objects.filter(Q(workspace__auto_apply=True) | Q(auto_apply=True), status=RunStatus.APPLY_PENDING)
        .exclude(policy_status=PolicyStatus.SOFT_FAILED)
        .order_by("id").values_list("id", flat=True)
    )


def run_apply_acked(task: Task, *, uow: UnitOfWork) -> None:
    """The agent has the apply and is starting terraform."""
    if task.status == RunStatus.APPLY_QUEUED:
        run_transition(task, RunStatus.APPLYING, uow=uow)


def run_apply_finished(finished: Finished, *, uow: UnitOfWork) -> None:
    """An apply job ended (caller's transaction; job, task and slot locked)."""
    task, result = finished.task, finished.result
    _free(finished, f"apply {result.outcome}", uow=uow)
    run_apply_acked(task, uow=uow)  # normally done already; a result implies it
    if finished.job.timed_out_at is not None and result.outcome not in (JobOutcome.SUCCEEDED, JobOutcome.STALE):
        run_transition(task, RunStatus.ERRORED, uow=uow, message=_stopped_at_bound(finished))
    elif result.outcome == JobOutcome.SUCCEEDED:
        run_transition(task, RunStatus.APPLIED, uow=uow)
    elif result.outcome == JobOutcome.CANCELLED:
        run_transition(task, RunStatus.CANCELLED, uow=uow, message=result.error or "apply cancelled")
    elif result.outcome == JobOutcome.STALE:
        run_transition(task, RunStatus.DISCARDED, uow=uow, message=f"stale plan: {result.error}")
    else:
        run_transition(task, RunStatus.ERRORED, uow=uow, message=result.error or "apply failed")


def run_job_lost(task: Task, job: Job, *, uow: UnitOfWork, requeued: bool, why: str) -> None:
    """A job of the run was abandoned (its agent died or stopped reporting it)."""
    if job.kind == JobKind.PLAN and requeued:
        run_plan_requeued(task, uow=uow, why=why)
    elif job.kind == JobKind.PLAN and task.status not in FINAL:
        # A plan that ran past its bound is not run again.
        run_transition(task, RunStatus.ERRORED, uow=uow, message=job.error)
    elif job.kind == JobKind.APPLY and requeued:
        # The apply never started: it goes cold to any agent; a warm dir elsewhere is no use.
        warmup_release(task, uow=uow, message=f"{why}; the apply goes cold")
    elif job.kind == JobKind.APPLY and task.status not in FINAL:
        run_transition(
            task, RunStatus.ERRORED, uow=uow,
            message=job.error + "; the state may be partially written, so the apply is not re-run automatically",
        )


def _stopped_at_bound(finished: Finished) -> str:
    """The run's message for a job that ended after its bound fired: how terraform stopped."""
    job = finished.job
    grace = job.cancel_grace_seconds or 0
    killed = job.finished_at is not None and (job.finished_at - job.timed_out_at).total_seconds() >= grace
    if job.kind == JobKind.PLAN:
        return job.timeout_message + ("; it did not stop within its grace and was killed" if killed else "")
    if killed:
        return (f"{job.timeout_message}; it did not stop within {duration_text(grace)} and was killed (SIGKILL): "
                f"the state may be partially written, so the apply is not re-run automatically")
    return (f"{job.timeout_message}; it stopped at a safe point (the state it reached is saved, its lock "
            f"released); the apply is not re-run automatically")


def apply_push(*, agent_id: int, agent_name: str, job_id: int, payload: dict[str, Any]) -> bool:
    """After commit: push an apply assigned to a warm agent to its long-poll (sealed: no
    secret goes through Redis in clear, wakeups.push_job). When the push
    did not reach Redis the agent cannot have the job, so it goes back to the queue at once
    (not after the acknowledgement timeout), cold, for any agent's claim, which falls back to
    the database while Redis is away. Returns whether the push reached Redis."""
    if wakeups.push_job(agent_id, job_id, payload):
        return True
    run_apply_unpushed(job_id=job_id, fence=payload["fence"],
                       why=f"the push to {agent_name} failed (Redis unreachable): the apply goes to the queue")
    return False


def run_apply_unpushed(*, job_id: int, fence: int, why: str) -> bool:
    """An apply assigned to an agent whose push never reached Redis (own transaction): back
    to the queue the way the sweep sends back an unacknowledged apply (job_abandon, then the
    run as in agent_reports.job_lost), with a new fence when it is taken again. Nothing happens if
    the job moved on meanwhile (acknowledged, re-assigned, finished): False."""
    with unit_of_work() as uow:
        job = job_locked(job_id)
        if job.status != JobStatus.RUNNING or job.fence != fence or job.acked_at is not None:
            return False
        log.warning("apply job %s of run %s: %s", job.id, job.task_id, why)
        task = Task.objects.select_for_update(no_key=True, of=("self",)).get(id=job.task_id)
        abandoned = job_abandon(job, uow=uow, why=why)
        run_job_lost(task, job, uow=uow, requeued=abandoned.requeued, why=why)
        pool_id = job.pool_id
        uow.on_commit(lambda: _dispatch_queued(pool_id))
    return True


@dataclass
class ConfirmResult:
    task: Task
    refused: str = ""  # non-empty: the apply was refused and the run discarded, with this reason
    handed: dict[str, Any] | None = None  # the apply's payload, for `hand_to` to answer with


def run_confirm(*, task_id: int, actor: Any, comment: str = "", hand_to: int | None = None) -> ConfirmResult:
    """Confirm Apply. At most one apply job per run: the row lock plus the status check make
    a second confirm (double click, two tabs, a retried request) a 409, and a unique
    constraint on (task, kind=apply) backs that up at the database level.

    `hand_to`: the agent whose request this is (a plan's result): an apply assigned to it is
    not pushed but returned (`handed`), for the caller to put in that request's answer."""
    with unit_of_work() as uow:
        run_jobs_locked(task_id)
        # The configuration's sha256 goes into the pushed payload; its archive (up to
        # IAC_MAX_CONFIG_BYTES) is not read on Confirm's hot path: an apply never gets it inline.
        # The workspace's variables too (the payload's), read with the lock: one round trip less.
        task = with_payload_variables(
            Task.objects.select_for_update(no_key=True, of=("self",))
            .select_related("workspace__pool", "configuration_version").defer("configuration_version__archive")
        ).get(id=task_id)
        if task.status != RunStatus.APPLY_PENDING:
            raise Conflict(f"run {task.id} is '{task.status}': only a run in 'apply_pending' can be confirmed")
        if task.policy_status == PolicyStatus.SOFT_FAILED:
            raise Conflict(f"run {task.id}: a soft-mandatory policy failed; Confirm is refused until an admin of "
                           f"workspace '{task.workspace.name}' overrides the policy check")
        pool = task.workspace.pool
        freeze = pool_freeze(pool.id)
        if freeze.frozen:
            # Nothing is dispatched while frozen; an apply confirmed now would start the moment
            # the window ends, when nobody may be watching. The run stays apply_pending.
            raise Conflict(f"pool '{pool.name}' is {freeze_text(freeze)}: Confirm Apply is refused until the "
                           f"window ends (or a site admin lifts it)")
        serial = state_serial_current(task.workspace_id)
        if serial != task.base_state_serial:
            reason = (
                f"stale plan: the workspace state changed after the plan (serial {task.base_state_serial} "
                f"at plan time, now {serial}); the run was discarded, queue a new run"
            )
            run_transition(task, RunStatus.DISCARDED, uow=uow, message=reason, actor=actor)
            audit_record(actor=actor, action="run.discard_stale", obj=task, data={"reason": reason}, uow=uow)
            return ConfirmResult(task=task, refused=reason)

        now = timezone.now()
        target = confirm_target(task, now=now, lock=True)
        task.confirmed_at = now
        task.confirmed_by = actor if getattr(actor, "is_authenticated", False) else None
        # The push (the hot path, below) is registered before anything else so that it is the
        # first thing done after commit: the run's wake-up and the live-view publishes that
        # the transition and the assignment make come after it (the unit's sends go last).
        push: dict[str, Any] = {}
        hand = target.slot is not None and hand_to is not None and target.slot.agent_id == hand_to
        handed = None
        if target.slot is not None and not hand:
            uow.on_commit(lambda: apply_push(**push))
        run_transition(task, RunStatus.APPLY_QUEUED, uow=uow, actor=actor)
        pool_id = task.workspace.pool_id
        if target.slot is not None:
            # The hot path: the job is created assigned to the reserving agent and slot, and
            # pushed (sealed) to its long-poll, which returns it without a database round (see
            # tasks_app.dispatch.claim). (A ready run has no queued warmup: those exist only for runs
            # whose warmup is none or expired.)
            job = Job(task=task, pool_id=pool_id, kind=JobKind.APPLY, target_agent=target.slot.agent,
                      terraform_version=task.terraform_version)
            assigned = job_assign(job, target.slot.agent, target.slot, task, uow=uow,
                                  message="confirmed: warm dir reserved here",
                                  reads=PayloadReads(variables=payload_variables(task),
                                                    set_variables=payload_set_variables(task)))
            if hand:
                handed = assigned.payload()
            else:
                push.update(agent_id=target.slot.agent_id, agent_name=target.slot.agent.name, job_id=job.id,
                            payload=assigned.payload())
        elif target.wait_for is not None:
            # A warmup is running: the apply waits for it (bounded) and starts on its dir the
            # moment it is ready (see warmups.warmup_job_finished).
            wait = settings.IAC_WARMUP_WAIT_SECONDS
            job = job_create(
                uow=uow, task=task, kind=JobKind.APPLY, pool_id=pool_id, target_agent=target.wait_for,
                terraform_version=task.terraform_version, hold_until=now + timedelta(seconds=wait),
                cold_reason=f"the warmup on {target.wait_for.name} did not finish within {wait:g}s of Confirm",
                message=f"waiting for the warmup on {target.wait_for.name}",
            )
        else:
            # A queued warmup is pointless now; a running one finishes and sees the run moved on.
            jobs_cancel_queued(task=task, uow=uow, kind=JobKind.WARMUP, message="the run was confirmed: it applies cold")
            job = job_create(uow=uow, task=task, kind=JobKind.APPLY, pool_id=pool_id, cold_reason=target.cold_reason,
                             terraform_version=task.terraform_version, message=target.cold_reason)
            uow.on_commit(lambda: _dispatch_queued(pool_id))
        audit_record(actor=actor, action="run.confirm", obj=task, data={"comment": comment, "job": job.id}, uow=uow)
    return ConfirmResult(task=task, handed=handed)


OVERRIDDEN_FROM_CLI = "overridden from the terraform CLI by {user}"


def run_policy_override(*, task_id: int, actor: Any, reason: str = "", from_cli: bool = False) -> Task:
    """Override a run's soft-failed policy check (`admin` on the workspace), with a reason,
    audited. The terraform CLI sends none: its override records who did it from there. An
    auto-apply run is confirmed at once; any other waits for its Confirm, its warm dir kept."""
    require(actor, Action.OVERRIDE_POLICY, Task.objects.select_related("workspace").get(id=task_id).workspace)
    reason = (reason or "").strip()
    if from_cli and not reason:
        reason = OVERRIDDEN_FROM_CLI.format(user=_actor_label(actor))
    if not reason:
        raise invalid_field("reason", "required: say why the failed policy may be overridden")
    if "\x00" in reason:
        raise invalid_field("reason", "must not contain NUL characters")
    auto = False
    with unit_of_work() as uow:
        task = Task.objects.select_for_update(no_key=True, of=("self",)).select_related("workspace").get(id=task_id)
        if task.status != RunStatus.APPLY_PENDING or task.policy_status != PolicyStatus.SOFT_FAILED:
            raise Conflict(f"run {task.id} has no soft-failed policy check to override "
                           f"(status '{task.status}', policy check '{task.policy_status or 'none'}')")
        policy_transition(task, PolicyStatus.OVERRIDDEN, uow=uow, actor=actor,
                          message=f"policy check overridden by {_actor_label(actor)}: {reason}")
        now = timezone.now()
        PolicyCheck.objects.filter(task=task).update(
            overridden_by=actor if getattr(actor, "is_authenticated", False) else None, overridden_at=now,
            override_reason=reason)
        audit_record(actor=actor, action="run.policy_override", obj=task, data={"reason": reason, "from_cli": from_cli},
                     uow=uow)
        auto = task.workspace.auto_apply or task.auto_apply
    if auto:
        try:
            run_confirm(task_id=task_id, actor="auto-apply")
        except PlatformError:  # the sweep's auto_apply step tries again
            log.warning("auto-apply of run %s after its override failed; the sweep retries", task_id, exc_info=True)
    return task


def run_discard(*, task_id: int, actor: Any, comment: str = "") -> Task:
    with unit_of_work() as uow:
        run_jobs_locked(task_id)
        task = Task.objects.select_for_update(no_key=True, of=("self",)).select_related("workspace").get(id=task_id)
        if task.status != RunStatus.APPLY_PENDING:
            raise Conflict(f"run {task.id} is '{task.status}': only a run in 'apply_pending' can be discarded")
        run_transition(task, RunStatus.DISCARDED, uow=uow, actor=actor,
                       message=comment or "discarded by " + _actor_label(actor))
        jobs_cancel_queued(task=task, uow=uow, message="the run was discarded")
        audit_record(actor=actor, action="run.discard", obj=task, data={"comment": comment})
    return task


def run_cancel(*, task_id: int, actor: Any, force: bool = False, comment: str = "") -> Task:
    """Cancel a run. Queued work is dropped at once; running terraform gets SIGINT (SIGKILL
    with force) through a cancel order pushed to its agent's claim long-poll after commit,
    within a second, repeated by every heartbeat until it stops (jobs_request_cancel); the
    run becomes `cancelled` when it does."""
    with unit_of_work() as uow:
        run_jobs_locked(task_id)
        task = Task.objects.select_for_update(no_key=True, of=("self",)).select_related("workspace").get(id=task_id)
        if task.status in FINAL:
            raise Conflict(f"run {task.id} is already '{task.status}'")
        jobs_cancel_queued(task=task, uow=uow, message="the run was cancelled")
        if not jobs_request_cancel(task=task, uow=uow, force=force):
            run_transition(task, RunStatus.CANCELLED, uow=uow, actor=actor, message=comment or "cancelled by " + _actor_label(actor))
        audit_record(actor=actor, action="run.cancel", obj=task, data={"force": force, "comment": comment})
    return task


def run_prepare(*, task_id: int) -> Task:
    """The Confirm dialog was opened: make sure a warmup is on its way if the run is not ready."""
    task = Task.objects.select_related("workspace").get(id=task_id)
    if task.status == RunStatus.APPLY_PENDING and task.warmup_status in (WarmupStatus.NONE, WarmupStatus.EXPIRED):
        warmups_ensure(pool_id=task.workspace.pool_id)
        task.refresh_from_db()
    return task


# --- durable follow-ups and bounds (the sweep: tasks_app.services.sweep) -----------------


def runs_confirmed_without_apply() -> list[int]:
    """Confirmed runs (apply_queued) with no queued or running apply job: Confirm committed
    and the job that should follow it is missing (or ended without moving the run on)."""
    busy = Job.objects.filter(kind=JobKind.APPLY, status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
    return list(
        Task.objects.filter(status=RunStatus.APPLY_QUEUED).exclude(id__in=busy.values("task_id"))
        .order_by("id").values_list("id", flat=True)
    )


def run_apply_job_restore(*, task_id: int) -> bool:
    """Give a confirmed run without an apply job one (queued, cold, for any agent of its pool).
    An apply job that ended without moving the run on may have run: the run errors instead
    (one apply per run, never a second). Idempotent: False when nothing was missing."""
    with unit_of_work() as uow:
        run_jobs_locked(task_id)
        task = Task.objects.select_for_update(no_key=True, of=("self",)).select_related("workspace__pool").get(id=task_id)
        if task.status != RunStatus.APPLY_QUEUED:
            return False
        apply = Job.objects.filter(task=task, kind=JobKind.APPLY).first()
        if apply is not None and apply.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            return False
        if apply is not None:
            run_transition(task, RunStatus.ERRORED, uow=uow, message=(
                f"apply job {apply.id} ended ({apply.status}: {apply.error or 'no reason given'}) without moving "
                f"the run on; the apply is not re-run automatically"))
            return True
        reason = "the confirmed run had no apply job (the process died after Confirm): the sweep queued it, cold"
        warmup_release(task, uow=uow, message=reason)
        pool_id = task.workspace.pool_id
        job_create(uow=uow, task=task, kind=JobKind.APPLY, pool_id=pool_id, cold_reason=reason,
                   terraform_version=task.terraform_version, message=reason)
        uow.on_commit(lambda: _dispatch_queued(pool_id))
    return True


def run_note(task: Task, *, message: str) -> None:
    """Say something about a (locked) run that is not a change of its status, e.g. that its
    plan or apply ran past its bound and is being stopped: a TaskEvent in its timeline (from
    and to its current status) and its message, at once, not only when the job ends."""
    TaskEvent.objects.create(task=task, from_status=task.status, to_status=task.status, message=message)
    task.message = message
    task.save(update_fields=["message"])


def run_no_agent(task: Task, job: Job, *, uow: UnitOfWork, message: str) -> None:
    """No agent came online for the run's queued job within the pool's bound (task and job
    locked, the job queued): the queued work is dropped and the run errors."""
    jobs_cancel_queued(task=task, uow=uow, message=message)
    run_transition(task, RunStatus.ERRORED, uow=uow, message=message)


def runs_apply_pending_past_bound(*, now: datetime) -> list[int]:
    """apply_pending runs of pools with an apply_pending bound that passed."""
    due = []
    for task in (
        Task.objects.filter(status=RunStatus.APPLY_PENDING, workspace__pool__apply_pending_timeout_seconds__gt=0)
        .select_related("workspace__pool").order_by("id")
    ):
        since = run_apply_pending_since(task)
        if since is not None and since + timedelta(seconds=task.workspace.pool.apply_pending_timeout_seconds) <= now:
            due.append(task.id)
    return due


def run_expire_pending(*, task_id: int, now: datetime) -> bool:
    """Discard a run that waited for Confirm past its pool's apply_pending bound."""
    with unit_of_work() as uow:
        run_jobs_locked(task_id)
        task = Task.objects.select_for_update(no_key=True, of=("self",)).select_related("workspace__pool").get(id=task_id)
        if task.status != RunStatus.APPLY_PENDING:
            return False
        pool = task.workspace.pool
        bound = pool.apply_pending_timeout_seconds
        since = run_apply_pending_since(task)
        if not bound or since is None or since + timedelta(seconds=bound) > now:
            return False
        message = (f"not confirmed within its {duration_text(bound)} bound (pool {pool.name}): discarded; "
                   f"queue a new run to apply")
        run_transition(task, RunStatus.DISCARDED, uow=uow, message=message)
        jobs_cancel_queued(task=task, uow=uow, message=message)
    return True
