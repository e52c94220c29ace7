"""Reads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Exists, Max, Q
from django.utils import timezone

from agents_app.models import Agent
from agents_app.protocol import AgentStatus, JobKind, JobStatus, SlotState, WarmupStatus
from agents_app.redaction import MASK, redact_json
from agents_app.services.freeze import freeze_text, pool_freeze
from iacplatform.permissions import Action, can
from tasks_app.dispatch.models import Job, Slot
from tasks_app.logrender import ansi_safe_cut, strip_ansi
from tasks_app.models import AuditEvent, LogChunk, PolicySet, StateVersion, Task, TaskEvent, Workspace
from tasks_app.redaction import sensitive_values
from tasks_app.states import BLOCKING, Operation, PolicyStatus, RunStatus
from tasks_app.workflows.set_reads import sets_applying

# The most of a run's log one API call or websocket message carries; clients page on with
# `next_offset`. (A log may hold IAC_MAX_LOG_BYTES, 50 MiB by default.)
LOG_PAGE_BYTES = 1024 * 1024
# What a run page shows of the log: its end, with a link to download the whole log.
LOG_TAIL_BYTES = 64 * 1024


def _utf8_cut(data: bytes, limit: int) -> int:
    """The largest cut <= limit that does not split a UTF-8 character (so the next read,
    which starts at the cut, begins on a whole character)."""
    if limit >= len(data):
        return len(data)
    cut = limit
    while cut > 0 and (data[cut] & 0xC0) == 0x80:  # a continuation byte: back off
        cut -= 1
    return cut


def run_log_read(
    *, task_id: int, offset: int = 0, job_kind: str | None = None, limit: int | None = None, ansi: bool = False
) -> tuple[str, int]:
    """The run's log from byte `offset`; returns (text, next offset). With `limit`, at most
    that many bytes (a log can hold IAC_MAX_LOG_BYTES: callers page with the next offset).
    With `job_kind`, only the chunks of that kind of job (e.g. the apply's own output).
    Offsets count the stored bytes, colour codes included; the text comes without them
    unless `ansi` (the run page renders them: tasks_app/logrender.py)."""
    text, next_offset = _run_log_read_raw(task_id=task_id, offset=offset, job_kind=job_kind, limit=limit)
    return (text if ansi else strip_ansi(text)), next_offset


def _run_log_read_raw(*, task_id: int, offset: int, job_kind: str | None, limit: int | None) -> tuple[str, int]:
    chunks = LogChunk.objects.filter(task_id=task_id).order_by("offset")
    if job_kind:
        chunks = chunks.filter(job__kind=job_kind)
        return "".join(c.text for c in chunks), 0
    out = bytearray()
    next_offset = offset
    # Start at the chunk that contains `offset`, not at the beginning of the log.
    first = chunks.filter(offset__lte=offset).order_by("-offset").values_list("offset", flat=True).first() or 0
    wanted = chunks.filter(offset__gte=first)
    if limit is not None:
        wanted = wanted.filter(offset__lt=offset + limit)
    for chunk in wanted.iterator():
        data = chunk.text.encode()
        end = chunk.offset + len(data)
        if end <= offset:
            continue
        start = max(0, offset - chunk.offset)
        piece = data[start:]
        if limit is not None and len(out) + len(piece) > limit:
            cut = ansi_safe_cut(piece, _utf8_cut(piece, limit - len(out)))
            out += piece[:cut]
            next_offset = chunk.offset + start + cut
            break
        out += piece
        next_offset = end
    return out.decode(errors="replace"), max(next_offset, offset)


def run_log_tail(*, task_id: int, size: int, log_size: int, ansi: bool = False) -> tuple[str, int, int]:
    """The last `size` bytes of a run's log (whole characters), for pages: returns (text,
    the offset it starts at, the offset after it)."""
    start = max(0, log_size - size)
    if start:
        # Begin on a whole line when one starts near the cut, not in the middle of one.
        text, end = run_log_read(task_id=task_id, offset=start, limit=size, ansi=True)
        newline = text.find("\n", 0, 4096)
        if newline >= 0:
            start += len(text[: newline + 1].encode())
            text = text[newline + 1 :]
        return (text if ansi else strip_ansi(text)), start, end
    text, end = run_log_read(task_id=task_id, offset=0, limit=size, ansi=ansi)
    return text, 0, end


@dataclass(frozen=True)
class SlotCounts:
    agents: int  # online agents
    running: int
    reserved: int
    idle: int


def pool_has_queued_jobs(pool_id: int) -> bool:
    """Is any job of the pool waiting for an agent (held or not, of any kind)?"""
    return Job.objects.filter(pool_id=pool_id, status=JobStatus.QUEUED).exists()


def agent_could_claim(*, agent_id: int, pool_id: int) -> bool:
    """Is a job of the pool queued, and has the agent an idle slot to take it on? One query,
    no locks: a claim that would find nothing to do (the usual answer on a busy pool, where
    every queued job wakes every agent) skips the claim's locks (agent_claim)."""
    queued = Job.objects.filter(pool_id=pool_id, status=JobStatus.QUEUED)
    return Slot.objects.filter(agent_id=agent_id, state=SlotState.IDLE).filter(Exists(queued)).exists()


def pool_slot_counts(pool_id: int) -> SlotCounts:
    """The slots of the pool's online agents, by state (one query)."""
    rows = dict(
        Slot.objects.filter(agent__pool_id=pool_id, agent__status=AgentStatus.ONLINE)
        .values_list("state")
        .annotate(n=Count("id"))
    )
    agents = Agent.objects.filter(pool_id=pool_id, status=AgentStatus.ONLINE).count()
    return SlotCounts(
        agents=agents,
        running=rows.get(SlotState.RUNNING, 0),
        reserved=rows.get(SlotState.RESERVED, 0),
        idle=rows.get(SlotState.IDLE, 0),
    )


def run_warm_slot(task_id: int) -> Slot | None:
    """Where the run's warm dir is, or where its warmup runs (None: nowhere)."""
    return (
        Slot.objects.select_related("agent")
        .filter(task_id=task_id)
        .filter(Q(state=SlotState.RESERVED) | Q(state=SlotState.RUNNING, job__kind=JobKind.WARMUP))
        .first()
    )


def duration_text(seconds: float) -> str:
    """A bound in words: 3600 -> "1h", 5400 -> "1h 30 min", 1800 -> "30 min", 45 -> "45s"."""
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours and not rest:
        return f"{hours}h"
    if hours:
        return f"{hours}h {minutes} min" + (f" {secs}s" if secs else "")
    if minutes and not secs:
        return f"{minutes} min"
    return f"{total}s"


def _clock(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%H:%M:%S")


@dataclass(frozen=True)
class NoAgent:
    """No online agent of a pool (with a terraform version, when one is needed)."""

    last_gone: datetime | None  # when the last such agent went offline (None: there never was one)


def pool_no_agent(pool_id: int, terraform_version: str = "") -> NoAgent | None:
    """None while an agent of the pool that runs `terraform_version` (any, when empty) is
    online; else when the last one went away."""
    agents = Agent.objects.filter(pool_id=pool_id)
    if terraform_version:
        agents = agents.filter(terraform_version=terraform_version)
    if agents.filter(status=AgentStatus.ONLINE).exists():
        return None
    return NoAgent(last_gone=agents.aggregate(at=Max("offline_at"))["at"])


def job_no_agent_since(job: Job, no_agent: NoAgent | None = None) -> datetime | None:
    """Since when no online agent of the job's pool could take the queued job (one with its
    terraform version, when it has one): None while one is online. The later of the job's
    queueing and the moment the last such agent went offline. The no-agent bound counts from
    it. (`no_agent`: pool_no_agent's answer, when the caller has it already.)

    A frozen pool's bound is suspended (None: its pods are meant to be gone), and after a
    freeze it counts from the freeze's end at the earliest: pods need time to come back."""
    gone = no_agent or pool_no_agent(job.pool_id, job.terraform_version)
    if gone is None:
        return None
    freeze = pool_freeze(job.pool_id)
    if freeze.frozen:
        return None
    moments = [job.created_at, gone.last_gone, freeze.thawed_at]
    return max(m for m in moments if m is not None)


def jobs_waiting_for_an_agent() -> list[Job]:
    """Queued plans and applies (not warmups: they wait for nobody), with their pool."""
    return list(
        Job.objects.filter(status=JobStatus.QUEUED).exclude(kind=JobKind.WARMUP)
        .select_related("pool").order_by("id")
    )


def run_apply_pending_since(task: Task) -> datetime | None:
    """When the run entered apply_pending (its latest TaskEvent to that status)."""
    return (
        TaskEvent.objects.filter(task=task, to_status=RunStatus.APPLY_PENDING)
        .exclude(from_status=RunStatus.APPLY_PENDING)  # a note (runs.run_note), not the entry
        .order_by("-id").values_list("created_at", flat=True).first()
    )


def _queued_reason(task: Task) -> str | None:
    """Why the run's queued plan or confirmed apply has not started yet."""
    job = (
        Job.objects.filter(task=task, kind__in=[JobKind.PLAN, JobKind.APPLY],
                           status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
        .select_related("pool", "target_agent", "agent").order_by("-id").first()
    )
    if job is None:
        return "queued: no job yet (the sweep creates it)" if task.status == RunStatus.APPLY_QUEUED else None
    if job.status == JobStatus.RUNNING:
        # A confirmed apply handed to an agent that has not acknowledged it yet.
        return f"queued: handed to {job.agent.name if job.agent else 'an agent'}, waiting for it to start"
    pool = job.pool
    now = timezone.now()
    freeze = pool_freeze(pool.id, now)
    if freeze.frozen:
        return f"queued: {freeze_text(freeze)}"
    if job.hold_until and job.hold_until > now:
        who = job.target_agent.name if job.target_agent else "its agent"
        left = (job.hold_until - now).total_seconds()
        return (f"queued: waiting for the warmup on {who} to finish (then the apply starts there; "
                f"cold in {left:.0f}s at the latest)")
    since = job_no_agent_since(job)
    if since is not None:
        gives_up = _clock(since + timedelta(seconds=pool.no_agent_timeout_seconds))
        online = Agent.objects.filter(pool=pool, status=AgentStatus.ONLINE)
        if job.terraform_version and online.exists():
            have = sorted(set(online.values_list("terraform_version", flat=True)))
            return (f"queued: no online agent of pool '{pool.name}' has terraform {job.terraform_version} "
                    f"(online agents have {', '.join(v or 'unknown' for v in have)}; gives up at {gives_up})")
        return f"queued: no agent of pool '{pool.name}' is online (gives up at {gives_up})"
    counts = pool_slot_counts(pool.id)
    if counts.idle == 0:
        total = counts.running + counts.reserved
        held = f", {counts.reserved} holding warm dirs" if counts.reserved else ""
        if counts.reserved and settings.IAC_RESERVATION_GRACE_SECONDS > 0:
            held += (f"; a warm dir is released for this run once its run has waited "
                     f"{settings.IAC_RESERVATION_GRACE_SECONDS:g}s for Confirm")
        slots = "the one slot" if total == 1 else f"all {total} slots"
        return f"queued: {slots} of pool '{pool.name}' {'is' if total == 1 else 'are'} busy ({counts.running} running{held})"
    return f"queued: waiting for an agent of pool '{pool.name}' to take it ({counts.idle} free slots)"


def _apply_pending_reason(task: Task) -> str:
    where = run_warm_slot(task.id)
    if where is not None and where.state == SlotState.RESERVED:
        until = f" until {_clock(task.warmup_expires_at)}" if task.warmup_expires_at else ""
        warm = f"warm on {where.agent.name} slot {where.index}{until}"
    elif where is not None:
        warm = f"warming up on {where.agent.name}"
    elif task.warmup_status == WarmupStatus.FAILED:
        warm = "not warm: the warmup failed, Confirm runs cold"
    else:
        warm = "not warm yet" + ("" if task.workspace.pool.warm_apply else ": warm apply is off for the pool")
    reason = f"apply_pending: waiting for confirmation ({warm})"
    if task.policy_status == PolicyStatus.SOFT_FAILED:
        reason = (f"apply_pending: a soft-mandatory policy failed; Confirm is refused until an admin of the "
                  f"workspace overrides it ({warm})")
    freeze = pool_freeze(task.workspace.pool_id)
    if freeze.frozen:
        reason += f"; Confirm is refused while the pool is {freeze_text(freeze)}"
    bound = task.workspace.pool.apply_pending_timeout_seconds
    since = run_apply_pending_since(task) if bound else None
    if since is not None:
        reason += f"; discarded at {_clock(since + timedelta(seconds=bound))} if not confirmed"
    return reason


def run_waiting_reason(task: Task) -> str | None:
    """Why a run waits, in words for the run page and the API; None when it does not wait
    (it runs, or it is final). The one place these words are made."""
    status = task.status
    if status in (RunStatus.PLAN_QUEUED, RunStatus.APPLY_QUEUED):
        return _queued_reason(task)
    if status == RunStatus.APPLY_PENDING:
        return _apply_pending_reason(task)
    if status == RunStatus.POLICY_CHECKING:
        return "policy_checking: the plan is being checked against the workspace's policies"
    if status != RunStatus.PENDING:
        return None
    if task.workspace.locked:
        return "pending: the workspace is locked"
    ahead = (
        Task.objects.filter(workspace_id=task.workspace_id, operation=Operation.PLAN_AND_APPLY,
                            status__in=list(BLOCKING))
        .exclude(id=task.id).order_by("id").first()
    )
    if ahead is not None:
        return f"pending: run #{ahead.id} ({ahead.status}) holds the workspace"
    return "pending: waiting to be started"


def workspace_has_policies(workspace_id: int) -> bool:
    """Whether any policy set governs the workspace (a global one, or one attached to it):
    its plans are checked before they can be confirmed."""
    return PolicySet.objects.filter(Q(is_global=True) | Q(workspaces__id=workspace_id)).exists()


def state_serial_current(workspace_id: int) -> int | None:
    return (
        StateVersion.objects.filter(workspace_id=workspace_id).order_by("-serial").values_list("serial", flat=True).first()
    )


def state_tracks_resources(workspace_id: int) -> bool:
    """Whether the workspace's latest state still records resource instances (deleting the
    workspace would orphan real infrastructure)."""
    latest = StateVersion.objects.filter(workspace_id=workspace_id).order_by("-serial", "-id").first()
    if latest is None:
        return False
    try:
        state = json.loads(latest.data)
    except ValueError:
        return True  # unreadable: assume the worst
    return any(r.get("instances") for r in state.get("resources") or [] if r.get("mode") != "data")


def masked_values_for(user: Any, workspace: Workspace) -> list[str] | None:
    """What to mask by value in what `user` reads of the workspace (plan summaries, outputs,
    messages): its sensitive values, whatever the configuration declares; None (nothing)
    for a user who may read the raw state, which holds them all in clear anyway."""
    return None if can(user, Action.READ_STATE, workspace) else sensitive_values(workspace.id)


def sensitive_values_changed_since(workspace_id: int, moment: datetime) -> bool:
    """Whether a sensitive value the workspace's runs could have used was changed or deleted
    after `moment` (the audit records say so): one of its own variables, one of a variable
    set that applies to it, a set detached from it, or any set deleted (which workspaces it
    applied to is gone with it). What was written before may hold a value no longer known,
    which therefore cannot be masked by value."""
    own = Q(action__in=["variable.update", "variable.delete"], object_type="workspace", object_id=str(workspace_id))
    own_changed = Q(action="variable.update", data__sensitive=True) | Q(action="variable.delete")
    set_ids = [str(i) for i in sets_applying(workspace_id).values_list("id", flat=True)]
    set_changed = Q(object_type="variableset", object_id__in=set_ids, data__sensitive=True,
                    action__in=["variable_set.variable_update", "variable_set.variable_delete"])
    name = Workspace.objects.filter(id=workspace_id).values_list("name", flat=True).first()
    set_gone = Q(action="variable_set.detach", data__workspace=name) | Q(action="variable_set.delete")
    return AuditEvent.objects.filter(created_at__gt=moment).filter(
        (own & own_changed) | set_changed | set_gone).exists()


def state_outputs(workspace_id: int, masked: list[str] | None = None) -> list[dict[str, Any]]:
    """The outputs of the workspace's latest state, by name; a sensitive output's value is
    None (it never leaves the state). [] when there is no state yet. With `masked` (see
    masked_values_for) those values are masked wherever they appear in a value, and every
    value is masked when a sensitive variable changed since the state was written: the
    state may hold its old value, which is known no more."""
    latest = StateVersion.objects.filter(workspace_id=workspace_id).order_by("-serial", "-id").first()
    if latest is None:
        return []
    try:
        outputs = json.loads(latest.data).get("outputs") or {}
    except (ValueError, AttributeError):
        return []
    hidden = masked is not None and sensitive_values_changed_since(workspace_id, latest.created_at)

    def shown(value: Any) -> Any:
        if masked is None:
            return value
        return MASK if hidden else redact_json(value, masked)

    return [
        {"name": name, "sensitive": bool(out.get("sensitive")), "type": out.get("type"),
         "value": None if out.get("sensitive") else shown(out.get("value"))}
        for name, out in sorted(outputs.items())
        if isinstance(out, dict)
    ]


def ms_between(start: datetime | None, end: datetime | None) -> int | None:
    """Milliseconds from `start` to `end` (e.g. Confirm → apply start), None if either is unknown."""
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000)
