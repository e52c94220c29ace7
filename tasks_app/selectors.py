"""Reads."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Q
from django.utils import timezone

from agents_app.models import Agent, Slot
from agents_app.protocol import AgentStatus, JobKind, JobStatus, SlotState
from tasks_app.models import Job, LogChunk, StateVersion, Task
from tasks_app.states import RunStatus

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
    *, task_id: int, offset: int = 0, job_kind: str | None = None, limit: int | None = None
) -> tuple[str, int]:
    """The run's log from byte `offset`; returns (text, next offset). With `limit`, at most
    that many bytes (a log can hold IAC_MAX_LOG_BYTES: callers page with the next offset).
    With `job_kind`, only the chunks of that kind of job (e.g. the apply's own output)."""
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
            cut = _utf8_cut(piece, limit - len(out))
            out += piece[:cut]
            next_offset = chunk.offset + start + cut
            break
        out += piece
        next_offset = end
    return out.decode(errors="replace"), max(next_offset, offset)


def run_log_tail(*, task_id: int, size: int, log_size: int) -> tuple[str, int, int]:
    """The last `size` bytes of a run's log (whole characters), for pages: returns (text,
    the offset it starts at, the offset after it)."""
    start = max(0, log_size - size)
    if start:
        # Begin on a whole line when one starts near the cut, not in the middle of one.
        text, end = run_log_read(task_id=task_id, offset=start, limit=size)
        newline = text.find("\n", 0, 4096)
        if newline >= 0:
            start += len(text[: newline + 1].encode())
            text = text[newline + 1 :]
        return text, start, end
    text, end = run_log_read(task_id=task_id, offset=0, limit=size)
    return text, 0, end


@dataclass(frozen=True)
class SlotCounts:
    agents: int  # online agents
    running: int
    reserved: int
    idle: int


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


def dispatch_wait_reason(task: Task) -> str:
    """Why the run's queued job has not been taken by an agent yet, in words for the run page
    and the API ("" when nothing waits)."""
    if task.status not in (RunStatus.PLAN_QUEUED, RunStatus.APPLY_QUEUED):
        return ""
    job = (
        Job.objects.filter(task=task, status=JobStatus.QUEUED).exclude(kind=JobKind.WARMUP)
        .select_related("pool", "target_agent").order_by("-id").first()
    )
    if job is None:
        return ""
    pool = job.pool
    now = timezone.now()
    if job.hold_until and job.hold_until > now:
        who = job.target_agent.name if job.target_agent else "its agent"
        left = (job.hold_until - now).total_seconds()
        return f"waiting for the warmup on {who} to finish (then the apply starts there; cold in {left:.0f}s at the latest)"
    online = Agent.objects.filter(pool=pool, status=AgentStatus.ONLINE)
    if not online.exists():
        return f"no online agent in pool {pool.name}"
    if job.terraform_version and not online.filter(terraform_version=job.terraform_version).exists():
        have = sorted(set(online.values_list("terraform_version", flat=True)))
        return (f"no online agent in pool {pool.name} has terraform {job.terraform_version} "
                f"(online agents have {', '.join(v or 'unknown' for v in have)})")
    counts = pool_slot_counts(pool.id)
    if counts.idle == 0:
        return (f"waiting for a free slot in pool {pool.name} ({counts.running} running, "
                f"{counts.reserved} reserved, 0 free)")
    return f"waiting for an agent of pool {pool.name} to take it ({counts.idle} free slots)"


def state_serial_current(workspace_id: int) -> int | None:
    return (
        StateVersion.objects.filter(workspace_id=workspace_id).order_by("-serial").values_list("serial", flat=True).first()
    )


def state_tracks_resources(workspace_id: int) -> bool:
    """Whether the workspace's latest state still records resource instances (deleting the
    workspace would orphan real infrastructure)."""
    import json

    latest = StateVersion.objects.filter(workspace_id=workspace_id).order_by("-serial", "-id").first()
    if latest is None:
        return False
    try:
        state = json.loads(latest.data)
    except ValueError:
        return True  # unreadable: assume the worst
    return any(r.get("instances") for r in state.get("resources") or [] if r.get("mode") != "data")
