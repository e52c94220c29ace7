"""Agent-side job handling: claim, logs, plan upload, finish.

Claiming is a row lock with SKIP LOCKED plus a status check, so two agents racing for one
job never both get it; losing that race is normal and returns nothing. Each claim bumps the
job's fencing token (`fence`); every later call about the job must carry it, so an agent
that was declared dead and comes back cannot write logs, plans or results for work that
has moved on.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from agents_app.models import Agent, AgentStatus, Slot, SlotState, hash_token, new_token
from iacplatform import crypto, wakeups
from iacplatform.api_errors import Conflict
from tasks_app.models import Job, JobKind, JobStatus, LogChunk, Plan, Task, Variable
from tasks_app.services.runs import (
    current_state_serial,
    reservation_release,
    run_confirm,
    run_transition,
)
from tasks_app.states import Operation, RunStatus, WarmupStatus, is_final


class AgentGone(Exception):
    """The agent was declared offline; it must drop its work and register again."""


def _lease() -> datetime:
    return timezone.now() + timedelta(seconds=settings.IAC_AGENT_OFFLINE_AFTER_SECONDS)


def job_claim(*, agent_id: int) -> dict[str, Any] | None:
    """Give the agent its next queued job, or None. (A confirmed apply for the agent that
    holds the run warm is not claimed here: Confirm assigns it and pushes it, see
    `job_assign_confirmed_apply`.)"""
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(id=agent_id)
        if agent.status != AgentStatus.ONLINE:
            raise AgentGone(f"agent {agent.name} was marked offline")
        # Applies pushed to an agent that did not take them in time go back to the pool now,
        # not at the next sweep: this is what wakes a waiting agent at that deadline.
        jobs_expire_leases(pool_id=agent.pool_id)
        slot = Slot.objects.select_for_update().filter(agent=agent, state=SlotState.IDLE).order_by("index").first()
        if slot is None:
            return None
        job = (
            Job.objects.select_for_update(skip_locked=True)
            .filter(pool_id=agent.pool_id, status=JobStatus.QUEUED)
            .order_by("id")
            .first()
        )
        if job is None:
            return None
        task = _lock_task_for_payload(job.task_id)
        return _assign(job, agent, slot, task)


def job_assign_confirmed_apply(*, job: Job, task: Task) -> dict[str, Any]:
    # `job` is not saved yet; _assign inserts it assigned.
    """Confirm on a run that is warm on an online agent: assign the apply to that agent and
    its reserved slot inside the Confirm transaction. The caller pushes the payload to the
    agent after commit; if the agent does not acknowledge it in time, the sweep (or any
    claiming agent of the pool) hands it to another agent, cold."""
    agent = task.warmup_agent
    slot = Slot.objects.select_for_update().get(id=task.warmup_slot_id)
    return _assign(job, agent, slot, task)


def _lock_task_for_payload(task_id: int) -> Task:
    return (
        Task.objects.select_for_update(of=("self",))
        .select_related("workspace__pool", "configuration_version")
        .defer("configuration_version__archive")
        .get(id=task_id)
    )


def _assign(job: Job, agent: Agent, slot: Slot, task: Task) -> dict[str, Any]:
    """Give `job` to `agent` on `slot` (all locked by the caller) and build its payload.
    A new fence and a new state credential each time: whoever held the job before can no
    longer report on it or lock the state with it."""
    now = timezone.now()
    credential, credential_hash = new_token("job")
    job.status = JobStatus.RUNNING
    job.agent = agent
    job.slot = slot
    job.fence += 1
    job.claimed_at = now
    job.lease_expires_at = _lease()
    job.credential_hash = credential_hash
    slot.state = SlotState.RUNNING
    slot.job = job
    slot.task = task

    if job.kind == JobKind.PLAN:
        task.base_state_serial = current_state_serial(task.workspace_id)
    elif job.kind == JobKind.WARMUP:
        task.warmup_status = WarmupStatus.WARMING
        task.warmup_agent = agent
        task.warmup_slot = slot
        task.warmup_at = now
        task.warmup_message = f"warming up on {agent.name}"
    elif job.kind == JobKind.APPLY and task.warmup_slot_id not in (None, slot.id):
        # A warm dir elsewhere is of no use to this agent: free that reservation. (The run
        # becomes `applying` when the agent acknowledges the job, see _ack.)
        Slot.objects.filter(task=task, state=SlotState.RESERVED).exclude(id=slot.id).update(
            state=SlotState.IDLE, task=None, job=None
        )
    if job.pk is None:  # Confirm creates the apply already assigned: one INSERT, no UPDATE
        job.save()
    else:
        job.save(update_fields=["status", "agent", "slot", "fence", "claimed_at", "lease_expires_at", "credential_hash"])
    slot.save(update_fields=["state", "job", "task", "updated_at"])
    if job.kind != JobKind.APPLY:  # assigning an apply changes nothing on the run
        task.save()
    return _payload(job, task, credential)


def job_next_unacked_expiry(*, agent_id: int, pool_id: int) -> datetime | None:
    """When the earliest apply pushed to another agent of the pool and not yet acknowledged
    falls back to the pool: a waiting agent's long-poll wakes then to take it, cold."""
    claimed_at = (
        Job.objects.filter(pool_id=pool_id, status=JobStatus.RUNNING, kind=JobKind.APPLY, acked_at__isnull=True)
        .exclude(agent_id=agent_id)
        .order_by("claimed_at")
        .values_list("claimed_at", flat=True)
        .first()
    )
    return claimed_at + timedelta(seconds=settings.IAC_TARGET_CLAIM_TIMEOUT_SECONDS) if claimed_at else None


def _payload(job: Job, task: Task, credential: str) -> dict[str, Any]:
    variables: dict[str, dict[str, str]] = {"terraform": {}, "env": {}}
    for var in Variable.objects.filter(workspace_id=task.workspace_id):
        variables[var.category][var.key] = var.value
    base = settings.IAC_PUBLIC_URL
    state_url = f"{base}/api/v1/workspaces/{task.workspace_id}/state"
    pool = task.workspace.pool
    return {
        "id": job.id,
        "kind": job.kind,
        "fence": job.fence,
        "task": {
            "id": task.id,
            "workspace": task.workspace_id,
            "workspace_name": task.workspace.name,
            "operation": task.operation,
            "plan_hash": task.plan_hash,
        },
        "configuration_sha256": task.configuration_version.sha256,
        # Keep the dir after a plan of a run that can apply, on a warm pool.
        "keep_dir": job.kind == JobKind.PLAN and task.can_apply and pool.warm_apply,
        "speculative": task.operation == Operation.PLAN,
        "cold_reason": job.cold_reason,
        "variables": variables,
        # Credentials reach terraform only through TF_HTTP_* environment variables.
        "state_backend": {
            "address": state_url,
            "lock_address": f"{state_url}/lock",
            "unlock_address": f"{state_url}/lock",
            "username": f"job-{job.id}",
            "password": credential,
        },
    }


def _running_job(job_id: int, agent: Agent, fence: int, *, lock: bool = False) -> Job:
    qs = Job.objects.select_for_update() if lock else Job.objects
    job = qs.filter(id=job_id, agent=agent).first()
    if job is None:
        raise Conflict(f"job {job_id} is not assigned to this agent")
    if job.fence != fence or job.status != JobStatus.RUNNING:
        raise Conflict(f"job {job_id} moved on (status {job.status}, fence {job.fence}); stop working on it")
    return job


def _sensitive_values(workspace_id: int) -> list[str]:
    return [v.value for v in Variable.objects.filter(workspace_id=workspace_id, sensitive=True) if v.value]


def redact(text: str, secrets_: list[str]) -> str:
    for secret in sorted(secrets_, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _ack(job: Job, task: Task) -> None:
    """The agent has the apply and is starting terraform (sent as the `ack` log event). Until
    then the apply provably has not run, so a claim whose answer was lost can safely go
    elsewhere; after it, a dead agent means an errored run (see job_abandon)."""
    if job.kind != JobKind.APPLY or job.acked_at is not None:
        return
    job.acked_at = timezone.now()
    job.save(update_fields=["acked_at"])
    run_transition(task, RunStatus.APPLYING)


def job_append_log(*, agent: Agent, job_id: int, fence: int, seq: int, text: str, events: dict[str, Any]) -> None:
    """Append one chunk of a job's output to its run's log. Idempotent per (job, seq), so an
    agent that retries a post after a timeout never duplicates lines."""
    with transaction.atomic():
        job = _running_job(job_id, agent, fence, lock=bool(events.get("ack")))
        if LogChunk.objects.filter(job=job, seq=seq).exists():
            return
        task = Task.objects.select_for_update().get(id=job.task_id)
        if events.get("ack"):
            _ack(job, task)
        now = timezone.now()
        fields = ["log_size"]
        if text:
            text = redact(text, _sensitive_values(task.workspace_id))
            LogChunk.objects.create(task=task, job=job, seq=seq, offset=task.log_size, text=text)
            task.log_size += len(text.encode())
            if job.kind == JobKind.APPLY and task.first_apply_log_at is None and task.apply_started_at:
                task.first_apply_log_at = now
                fields.append("first_apply_log_at")
        if job.kind == JobKind.APPLY and "apply_started_at" in events:
            task.apply_started_at = datetime.fromtimestamp(float(events["apply_started_at"]), tz=UTC)
            task.apply_path = events.get("apply_path", "")
            task.apply_path_reason = events.get("apply_path_reason", "")
            fields += ["apply_started_at", "apply_path", "apply_path_reason"]
            if text and task.first_apply_log_at is None:
                task.first_apply_log_at = now
                fields.append("first_apply_log_at")
        task.save(update_fields=fields)
        if text:
            from tasks_app.events import run_log_appended

            task_id = task.id
            transaction.on_commit(lambda: run_log_appended(task_id))


def job_upload_plan(
    *, agent: Agent, job_id: int, fence: int, data: bytes, sha256: str, summary: dict, has_changes: bool
) -> Plan:
    if len(data) > settings.IAC_MAX_PLAN_BYTES:
        raise ValueError(f"plan file is {len(data)} bytes; the limit is {settings.IAC_MAX_PLAN_BYTES}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ValueError(f"plan file sha256 is {actual}, not the {sha256} the agent sent: upload corrupted")
    with transaction.atomic():
        job = _running_job(job_id, agent, fence)
        if job.kind != JobKind.PLAN:
            raise Conflict(f"job {job_id} is a {job.kind} job; only plan jobs upload plans")
        task = Task.objects.select_for_update().get(id=job.task_id)
        plan, _ = Plan.objects.update_or_create(
            task=task,
            defaults={"job": job, "encrypted_data": crypto.encrypt(data), "sha256": sha256, "size": len(data), "summary": summary},
        )
        task.plan_hash = sha256
        task.has_changes = has_changes
        task.save(update_fields=["plan_hash", "has_changes"])
    return plan


def job_plan_bytes(*, agent: Agent, job_id: int, fence: int) -> bytes:
    job = _running_job(job_id, agent, fence)
    plan = Plan.objects.filter(task_id=job.task_id).first()
    if plan is None:
        raise Conflict(f"run {job.task_id} has no stored plan")
    return plan.data


def job_configuration(*, agent: Agent, job_id: int, fence: int) -> bytes:
    job = _running_job(job_id, agent, fence)
    return bytes(job.task.configuration_version.archive)


def _free_slot(job: Job, *, reserve_for: Task | None = None) -> None:
    if job.slot_id is None:
        return
    if reserve_for is not None:
        Slot.objects.filter(id=job.slot_id).update(state=SlotState.RESERVED, job=None, task=reserve_for)
    else:
        Slot.objects.filter(id=job.slot_id).update(state=SlotState.IDLE, job=None, task=None)


def job_finish(
    *, agent: Agent, job_id: int, fence: int, ok: bool, error: str = "", kept_dir: bool = False,
    cancelled: bool = False, stale: bool = False,
) -> dict[str, Any]:
    """Record a job's result and move its run on. Returns {"keep_dir": bool}: whether the
    agent should keep the work dir as a warm reservation."""
    follow_ups: list = []
    keep = False
    with transaction.atomic():
        job = _running_job(job_id, agent, fence, lock=True)
        task = Task.objects.select_for_update(of=("self",)).select_related("workspace__pool").get(id=job.task_id)
        now = timezone.now()
        job.status = JobStatus.SUCCEEDED if ok else (JobStatus.CANCELLED if cancelled else JobStatus.FAILED)
        job.error = error
        job.finished_at = now
        job.save()
        if job.kind == JobKind.PLAN:
            keep = _finish_plan(job, task, ok=ok, error=error, cancelled=cancelled, kept_dir=kept_dir, follow_ups=follow_ups)
        elif job.kind == JobKind.WARMUP:
            keep = _finish_warmup(job, task, ok=ok, error=error, kept_dir=kept_dir, follow_ups=follow_ups)
        else:
            _free_slot(job)
            task.warmup_agent = None
            task.warmup_slot = None
            _ack(job, task)  # normally done already; a result implies it
            if ok:
                run_transition(task, RunStatus.APPLIED)
            elif cancelled:
                run_transition(task, RunStatus.CANCELLED, message=error or "apply cancelled")
            elif stale:
                run_transition(task, RunStatus.DISCARDED, message=f"stale plan: {error}")
            else:
                run_transition(task, RunStatus.ERRORED, message=error or "apply failed")
        if follow_ups:
            transaction.on_commit(lambda: [f() for f in follow_ups])
    return {"keep_dir": keep}


def _finish_plan(job: Job, task: Task, *, ok: bool, error: str, cancelled: bool, kept_dir: bool, follow_ups: list) -> bool:
    from tasks_app.services.warmups import warmups_ensure

    if cancelled:
        _free_slot(job)
        run_transition(task, RunStatus.CANCELLED, message=error or "plan cancelled")
        return False
    if not ok:
        _free_slot(job)
        run_transition(task, RunStatus.ERRORED, message=error or "plan failed")
        return False
    if not task.plan_hash:
        _free_slot(job)
        run_transition(task, RunStatus.ERRORED, message="the agent finished the plan without uploading plan.out")
        return False
    if not task.has_changes:
        _free_slot(job)
        run_transition(task, RunStatus.PLANNED_NO_CHANGES, message="no changes: nothing to apply")
        return False
    if task.operation == Operation.PLAN:
        _free_slot(job)
        run_transition(task, RunStatus.PLANNED)
        return False

    run_transition(task, RunStatus.APPLY_PENDING)
    pool = task.workspace.pool
    keep = kept_dir and pool.warm_apply
    if keep:
        # The plan's own dir is the warm dir: ready at once, on this agent and slot.
        _free_slot(job, reserve_for=task)
        task.warmup_status = WarmupStatus.READY
        task.warmup_agent = job.agent
        task.warmup_slot = job.slot
        task.warmup_at = timezone.now()
        task.warmup_expires_at = task.warmup_at + timedelta(seconds=settings.IAC_WARMUP_EXPIRE_SECONDS)
        task.warmup_retry_count = 0
        task.warmup_message = f"plan dir kept on {job.agent.name}"
        task.save()
    else:
        _free_slot(job)
        pool_id = pool.id
        follow_ups.append(lambda: warmups_ensure(pool_id=pool_id))
    if task.workspace.auto_apply:
        task_id = task.id
        follow_ups.append(lambda: run_confirm(task_id=task_id, actor="auto-apply"))
    return keep


def _finish_warmup(job: Job, task: Task, *, ok: bool, error: str, kept_dir: bool, follow_ups: list) -> bool:
    from tasks_app.services.warmups import warmups_ensure

    if task.status != RunStatus.APPLY_PENDING or task.warmup_slot_id != job.slot_id:
        # Confirmed, discarded or re-assigned meanwhile: this dir is not needed.
        _free_slot(job)
        return False
    if ok and kept_dir:
        _free_slot(job, reserve_for=task)
        task.warmup_status = WarmupStatus.READY
        task.warmup_at = timezone.now()
        task.warmup_expires_at = task.warmup_at + timedelta(seconds=settings.IAC_WARMUP_EXPIRE_SECONDS)
        task.warmup_retry_count = 0
        task.warmup_message = f"warmed up on {job.agent.name}"
        task.save()
        return True
    _free_slot(job)
    if _warmup_failed(task, error or "warmup failed"):
        pool_id = task.workspace.pool_id
        follow_ups.append(lambda: warmups_ensure(pool_id=pool_id))
    return False


def _warmup_failed(task: Task, message: str) -> bool:
    """Count a failed warmup attempt; returns whether another attempt is allowed. At the
    limit the warmup is `failed` for good: no loop of agents warming a broken run."""
    task.warmup_retry_count += 1
    failed = task.warmup_retry_count >= settings.IAC_WARMUP_MAX_RETRIES
    reservation_release(task, warmup_status=WarmupStatus.FAILED if failed else WarmupStatus.NONE)
    task.warmup_message = message + (" (giving up: Confirm will take the cold path)" if failed else "")
    task.save()
    return not failed


def job_abandon(job: Job, *, why: str) -> None:
    """The job's agent died or lost the job (caller holds the job row lock). A plan is
    re-queued; a warmup counts as a failed attempt; an apply errors and is never re-run,
    since it may have half-written the state."""
    task = Task.objects.select_for_update().get(id=job.task_id)
    _free_slot(job)
    never_ran = job.kind == JobKind.APPLY and job.acked_at is None
    if job.kind == JobKind.PLAN or never_ran:
        job.status = JobStatus.QUEUED
        job.agent = None
        job.slot = None
        job.credential_hash = ""
        if never_ran:
            # Any agent may take it now, on the cold path (the warm dir was on the lost agent).
            job.cold_reason = f"{why}; the apply had not started"
            reservation_release(task)
            task.save()
        job.save()
        return
    job.status = JobStatus.FAILED
    job.error = f"{why} during the {job.kind}"
    job.finished_at = timezone.now()
    job.save()
    if job.kind == JobKind.WARMUP:
        if task.status == RunStatus.APPLY_PENDING and task.warmup_slot_id == job.slot_id:
            _warmup_failed(task, job.error)
    elif not is_final(task.status):
        run_transition(
            task, RunStatus.ERRORED,
            message=job.error + "; the state may be partially written, so the apply is not re-run automatically",
        )


def jobs_expire_leases(*, pool_id: int | None = None) -> list[int]:
    """Running jobs whose lease ran out although their agent may still be online, and applies
    assigned but not acknowledged within IAC_TARGET_CLAIM_TIMEOUT_SECONDS (the push never
    arrived, or the agent hangs): those never ran and go to another agent."""
    from tasks_app.services.warmups import warmups_ensure

    now = timezone.now()
    timeout = settings.IAC_TARGET_CLAIM_TIMEOUT_SECONDS
    unacked = Q(kind=JobKind.APPLY, acked_at__isnull=True, claimed_at__lt=now - timedelta(seconds=timeout))
    running = Job.objects.select_for_update(skip_locked=True, of=("self",)).select_related("agent")
    running = running.filter(status=JobStatus.RUNNING).filter(Q(lease_expires_at__lt=now) | unacked)
    if pool_id is not None:
        running = running.filter(pool_id=pool_id)
    expired = []
    with transaction.atomic():
        for job in running:
            agent_name = job.agent.name if job.agent else "its agent"
            if job.kind == JobKind.APPLY and job.acked_at is None:
                why = f"{agent_name} did not take the apply within {timeout:g}s"
            else:
                why = f"the lease of {job.kind} job {job.id} expired ({agent_name} stopped reporting it)"
            job_abandon(job, why=why)
            expired.append(job.id)
            transaction.on_commit(lambda p=job.pool_id: (warmups_ensure(pool_id=p), wakeups.wake_pool(p)))
    return expired


def job_by_credential(token: str) -> Job | None:
    return (
        Job.objects.select_related("task")
        .filter(credential_hash=hash_token(token), status=JobStatus.RUNNING)
        .first()
    )

