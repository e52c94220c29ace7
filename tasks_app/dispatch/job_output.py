"""What a running job sends besides its result: its log (appended in order, idempotent per
chunk, redacted, capped at IAC_MAX_LOG_BYTES) and its plan file (checked, stored masked).
Returns what happened (`LogAppended`); the caller moves the run on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.utils import timezone

from agents_app.models import Agent
from agents_app.protocol import JobKind, LogPost
from agents_app.redaction import plan_summary_masked, redact
from iacplatform import crypto, metrics
from iacplatform.errors import Conflict, Invalid
from iacplatform.unit_of_work import UnitOfWork, unit_of_work
from tasks_app import events
from tasks_app.dispatch.jobs import LockedJob, job_running
from tasks_app.dispatch.models import Job
from tasks_app.models import LogChunk, Plan, Task
from tasks_app.redaction import run_sensitive_values


@dataclass(frozen=True)
class LogAppended:
    job: Job
    task: Task
    acked_now: bool  # this post acknowledged an apply: the run becomes `applying`


def _size_label(size: int) -> str:
    mib = size / (1024 * 1024)
    return f"{mib:g} MiB" if mib >= 1 and mib == int(mib) else f"{size} bytes"


def _log_capped(text: str, log_size: int) -> str:
    """What of `text` a log already `log_size` bytes long may store under IAC_MAX_LOG_BYTES:
    all of it, the part that fits plus one marker line (the first time the cap is reached),
    or nothing. The marker is the only thing ever stored past the cap, so `log_size` over the
    cap means the marker is already there."""
    cap: int = settings.IAC_MAX_LOG_BYTES
    data = text.encode()
    if log_size + len(data) <= cap:
        return text
    if log_size > cap:
        return ""
    kept = data[: cap - log_size].decode(errors="ignore")  # a character cut in two is dropped
    newline = "" if not kept or kept.endswith("\n") else "\n"
    return f"{kept}{newline}[log truncated at {_size_label(cap)}: the rest of this run's output was not stored]\n"


def job_append_log(*, uow: UnitOfWork, locked: LockedJob, post: LogPost) -> LogAppended | None:
    """Append one chunk of a job's output to its run's log (caller's transaction; `locked`:
    the job and run as job_locked_with_run gave them, with whether this seq is stored).
    Idempotent per (job, seq), so an agent that retries a post never duplicates lines.
    Returns None for a seq already stored. The chunk is inserted now; the run's fields are
    saved by `uow`; an acknowledgement sets the job's `acked_at`, which the caller saves with
    the job (`acked_now`)."""
    ev = post.events
    job, task = locked.job, locked.task
    stored = locked.log_chunk_stored
    if stored is None:
        stored = LogChunk.objects.filter(job=job, seq=post.seq).exists()
    if stored:
        return None
    acked_now = False
    if ev.ack and job.kind == JobKind.APPLY and job.acked_at is None:
        # Until now the apply provably has not run, so a claim whose answer was lost can go
        # elsewhere; from now on a dead agent means an errored run (see job_abandon).
        job.acked_at = timezone.now()
        acked_now = True
    now = timezone.now()
    fields = ["log_size"]
    had_start, had_first_log = task.apply_started_at is not None, task.first_apply_log_at is not None
    text = post.text
    if text:
        text = _log_capped(redact(text, run_sensitive_values(task, locked.sensitive_ciphertexts)), task.log_size)
    if text:
        LogChunk.objects.create(task=task, job=job, seq=post.seq, offset=task.log_size, text=text)
        task.log_size += len(text.encode())
        if job.kind == JobKind.APPLY and task.first_apply_log_at is None and task.apply_started_at:
            task.first_apply_log_at = now
            fields.append("first_apply_log_at")
    if job.kind == JobKind.APPLY and ev.apply_started_at is not None:
        task.apply_started_at = datetime.fromtimestamp(ev.apply_started_at, tz=UTC)
        task.apply_path = ev.apply_path or ""
        task.apply_path_reason = ev.apply_path_reason
        fields += ["apply_started_at", "apply_path", "apply_path_reason"]
        if text and task.first_apply_log_at is None:
            task.first_apply_log_at = now
            fields.append("first_apply_log_at")
    uow.save(task, *fields)
    if text:
        end = task.log_size
        # The chunk travels to the run page's viewers as it was stored, rendered once there.
        events.run_log_appended(uow, task.id, start=end - len(text.encode()), end=end, text=text)
    if task.confirmed_at is not None and (not had_start or not had_first_log):
        _observe_confirm_latencies(task, uow=uow, start=not had_start, first_log=not had_first_log)
    return LogAppended(job=job, task=task, acked_now=acked_now)


def _observe_confirm_latencies(task: Task, *, uow: UnitOfWork, start: bool, first_log: bool) -> None:
    """Confirm → apply start and → first log line, once each per run, after commit: the
    moments the server learns them (the same numbers the run page shows)."""
    path, confirmed = task.apply_path, task.confirmed_at
    started = task.apply_started_at if start else None
    first = task.first_apply_log_at if first_log else None
    if started is None and first is None:
        return

    def observe() -> None:
        if started is not None:
            metrics.observe_confirm_latency(path, (started - confirmed).total_seconds())
        if first is not None:
            metrics.observe_confirm_first_log(path, (first - confirmed).total_seconds())

    uow.on_commit(observe)


def job_upload_plan(
    *, agent: Agent, job_id: int, fence: int, data: bytes, sha256: str, summary: dict, has_changes: bool
) -> Plan:
    job_running(job_id, agent, fence)  # whose job it is comes first: another agent learns nothing more
    plan_check(data, sha256)
    with unit_of_work() as uow:
        return job_store_plan(job_running(job_id, agent, fence), uow=uow, data=data, sha256=sha256, summary=summary,
                              has_changes=has_changes)


def plan_check(data: bytes, sha256: str) -> None:
    """Refuse a plan file over the size limit or not matching the sha256 the agent sent
    (outside any transaction: hashing a large plan holds no lock)."""
    if len(data) > settings.IAC_MAX_PLAN_BYTES:
        raise Invalid(f"plan file is {len(data)} bytes; the limit is {settings.IAC_MAX_PLAN_BYTES}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise Invalid(f"plan file sha256 is {actual}, not the {sha256} the agent sent: upload corrupted")


def job_store_plan(job: Job, *, uow: UnitOfWork, data: bytes, sha256: str, summary: dict, has_changes: bool,
                   locked: LockedJob | None = None, json_gz: bytes | None = None) -> Plan:
    """Store the plan of a plan job that is its agent's at this fence (caller's transaction;
    the caller ran plan_check; `locked`: the job and its run, locked by the caller). The plan
    row is written now; the run's plan_hash and has_changes are saved by `uow`. `json_gz`:
    the plan's JSON, gzipped, stored encrypted beside it (the policy check's input)."""
    if json_gz is not None and len(json_gz) > settings.IAC_MAX_PLAN_BYTES:
        raise Invalid(f"the plan's JSON is {len(json_gz)} bytes compressed; the limit is {settings.IAC_MAX_PLAN_BYTES}")
    if job.kind != JobKind.PLAN:
        raise Conflict(f"job {job.id} is a {job.kind} job; only plan jobs upload plans")
    task = locked.task if locked else Task.objects.select_for_update(no_key=True, of=("self",)).get(id=job.task_id)
    sensitive = run_sensitive_values(task, locked.sensitive_ciphertexts if locked else None)
    # One INSERT … ON CONFLICT (a re-run plan job replaces the run's plan), not
    # update_or_create's savepoints, SELECT and INSERT: this is on the way to apply_pending.
    [plan] = Plan.objects.bulk_create(
        [Plan(task=task, job=job, encrypted_data=crypto.encrypt(data), sha256=sha256, size=len(data),
              # Masked as the log is, with the values this run used: a configuration that does
              # not declare a platform-sensitive variable `sensitive` shows it in its diff, and a
              # value changed later would no longer be known to mask it when it is read.
              summary=plan_summary_masked(summary, sensitive),
              encrypted_json=crypto.encrypt(json_gz) if json_gz is not None else None)],
        update_conflicts=True, unique_fields=["task"],
        update_fields=["job", "encrypted_data", "sha256", "size", "summary", "encrypted_json"],
    )
    task.plan_hash = sha256
    task.has_changes = has_changes
    uow.save(task, "plan_hash", "has_changes")
    return plan
