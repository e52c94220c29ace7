"""Analysis for the dispatch benchmark, on plain rows (no Django): slot occupancy rebuilt from
job timestamps, claim latencies, double claims and applies, terraform's own time, the plot.

All times are epoch seconds (floats) from one clock: the server, the agents and the
benchmark share this machine."""

from __future__ import annotations

import bisect
import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.report import percentile


@dataclass(frozen=True)
class JobRow:
    id: int
    kind: str
    task: int
    status: str
    created: float
    claimed: float | None
    finished: float | None
    agent: int | None
    slot: tuple[int, int] | int | None  # (agent id, slot index) or a Slot id: which place ran it
    targeted: bool  # created already assigned (a warm run's apply, pushed to its agent)
    fence: int


@dataclass(frozen=True)
class TaskRow:
    id: int
    workspace: int
    status: str
    created: float
    finished: float | None
    confirmed: float | None
    apply_started: float | None
    apply_path: str
    message: str
    warmup_status: str


@dataclass(frozen=True)
class TfCall:
    """One terraform process, timed by the benchmark's wrapper around the binary."""

    start: float
    end: float
    rc: int
    command: str
    agent: str
    workspace: int | None
    task: int | None

    @property
    def seconds(self) -> float:
        return self.end - self.start


# --- small helpers ---------------------------------------------------------------------------


def dist(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    return {
        "n": len(values),
        "p50": statistics.median(values),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def fmt_ms(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.0f}"


PUSHED_WITHIN_S = 0.05


def queued_through_pool(job: JobRow) -> bool:
    """Jobs that waited in the pool's queue for any agent to claim them: plans, warmups, cold
    applies. A warm run's apply is created assigned to its reserved slot (no queue); if its
    agent does not take it in time it is re-queued (fence > 1), and an apply confirmed while
    its warmup runs waits for that agent; both are counted separately (requeued_targeted_ms)."""
    return not job.targeted


# --- slot occupancy --------------------------------------------------------------------------


class Occupancy:
    """How many slots were taken at any moment, rebuilt from job timestamps.

    A slot is taken from a job's claim to its finish, and, between a job and a targeted apply
    of the same run on the same slot, by the warm reservation (plan finished -> the apply
    assigned to that slot). Intervals are half-open [start, end)."""

    def __init__(self, jobs: list[JobRow], end: float) -> None:
        self.intervals: list[tuple[float, float]] = []
        self.slot_free_at: dict[int, float | None] = {}  # job id -> when its slot became free before it
        by_slot: dict[Any, list[JobRow]] = defaultdict(list)
        for j in jobs:
            if j.claimed is None:
                continue
            self.intervals.append((j.claimed, j.finished if j.finished is not None else end))
            if j.slot is not None:
                by_slot[j.slot].append(j)
        for seq in by_slot.values():
            seq.sort(key=lambda j: j.claimed or 0.0)
            prev: JobRow | None = None
            for j in seq:
                if prev is not None and prev.finished is not None:
                    if j.targeted and j.task == prev.task and prev.finished <= (j.claimed or prev.finished):
                        # The warm reservation: the slot stayed taken between the two.
                        self.intervals.append((prev.finished, j.claimed or prev.finished))
                        self.slot_free_at[j.id] = None
                    else:
                        self.slot_free_at[j.id] = prev.finished
                else:
                    self.slot_free_at[j.id] = None
                prev = j
        self._starts = sorted(s for s, _ in self.intervals)
        self._ends = sorted(e for _, e in self.intervals)

    def busy(self, t: float) -> int:
        return bisect.bisect_right(self._starts, t) - bisect.bisect_right(self._ends, t)


@dataclass
class ClaimLatencies:
    free_slot_ms: list[float] = field(default_factory=list)  # created while a slot was free
    free_slot_jobs: list[int] = field(default_factory=list)
    slot_freed_ms: list[float] = field(default_factory=list)  # waited; its slot freed -> claimed
    all_queued_ms: list[float] = field(default_factory=list)  # every job through the queue
    requeued_targeted_ms: list[float] = field(default_factory=list)  # warm applies not taken at once
    never_claimed: list[int] = field(default_factory=list)


def claim_latencies(jobs: list[JobRow], occ: Occupancy, total_slots: int) -> ClaimLatencies:
    """Queue -> claimed (the server's claim transaction: Job.created_at -> Job.claimed_at).

    "Created while a slot was free": at the job's creation, the free slots (total minus
    running jobs minus warm reservations) outnumbered the queued jobs still waiting ahead of
    it (FIFO claim order), so an agent could have taken it at once. For jobs that had to wait
    for a slot, "slot freed -> claimed" is the time from the moment the slot that finally ran
    the job became free (the previous job on it finished) to the claim: idle capacity while
    work was waiting."""
    out = ClaimLatencies()
    queued = [j for j in jobs if queued_through_pool(j)]
    # Claim order is the job id (FIFO; warmups after plans and applies), not the creation
    # timestamp: two jobs created in the same millisecond by different requests can carry
    # timestamps in the other order than their ids.
    queued.sort(key=lambda j: j.id)
    for j in jobs:
        # Assigned in the Confirm transaction, claimed_at is at (or a hair before) created_at;
        # later means the apply was re-queued after its push timed out, or waited for a warmup.
        if j.targeted and j.claimed is not None and (j.fence > 1 or j.claimed - j.created > PUSHED_WITHIN_S):
            out.requeued_targeted_ms.append((j.claimed - j.created) * 1000)
    for i, j in enumerate(queued):
        if j.claimed is None:
            out.never_claimed.append(j.id)
            continue
        wait_ms = (j.claimed - j.created) * 1000
        out.all_queued_ms.append(wait_ms)
        ahead = sum(1 for k in queued[:i] if k.claimed is None or k.claimed > j.created)
        free = total_slots - occ.busy(j.created)
        if free - ahead >= 1:
            out.free_slot_ms.append(wait_ms)
            out.free_slot_jobs.append(j.id)
            continue
        freed = occ.slot_free_at.get(j.id)
        if freed is not None and freed > j.created:
            out.slot_freed_ms.append((j.claimed - freed) * 1000)
    return out


# --- double claims and applies ---------------------------------------------------------------

# "claimed" from a long-poll's answer, "handed" with a plan's or warmup's result (FinishReply.jobs).
CLAIM_LINE = re.compile(r"^(\S+ \S+) agent (\S+) INFO (?:claimed|handed) (\w+) job (\d+) for run (\d+)", re.M)


def agent_claims(log_paths: Iterable[Path]) -> dict[int, list[tuple[str, float]]]:
    """job id -> (agent, when its log line was written) for every claim line: the agents
    that say they took the job. The agent logs local time with millisecond resolution."""
    claims: dict[int, list[tuple[str, float]]] = defaultdict(list)
    for path in log_paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for m in CLAIM_LINE.finditer(text):
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # naive = local time
            claims[int(m.group(4))].append((m.group(2), when))
    return dict(claims)


MARKER_LINE = re.compile(r"applied run=(\S+) dir=(\S+)")


def marker_applies(marker_dir: Path) -> tuple[Counter[int], dict[str, int], int]:
    """(run id -> provisioner runs, marker file -> lines, lines without a run id) from the
    per-workspace marker files the local-exec provisioner appends to."""
    per_run: Counter[int] = Counter()
    per_file: dict[str, int] = {}
    unparsed = 0
    for path in sorted(marker_dir.glob("*.log")):
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        per_file[path.stem] = len(lines)
        for ln in lines:
            m = MARKER_LINE.search(ln)
            if m and m.group(1).isdigit():
                per_run[int(m.group(1))] += 1
            else:
                unparsed += 1
    return per_run, per_file, unparsed


# --- errors in the logs ------------------------------------------------------------------------

ACCESS_5XX = re.compile(
    r'"(GET|POST|PUT|PATCH|DELETE) (\S+?)(?:\?\S*)? HTTP/[\d.]+" (5\d\d) |"(GET|POST|PUT|PATCH|DELETE) (\S+?)(?:\?\S*)?" (5\d\d) '
)
EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Detected|Exit))(?::|$)")
CELERY_ERROR = re.compile(r"\b(ERROR|CRITICAL)/\S+\] (.*)$")
AGENT_PROBLEM = re.compile(r"^\S+ \S+ agent \S+ (WARNING|ERROR|CRITICAL) (.*)$")
_IDS = re.compile(r"\d+")


def log_problems(log_dir: Path) -> dict[str, Counter[str]]:
    """What went wrong on the way, from the processes' own logs: HTTP 5xx answers (Daphne's
    access log), exception lines (tracebacks of web and worker), Celery task errors, agent
    warnings. Numbers in messages are blanked so repeats group together."""
    out: dict[str, Counter[str]] = {
        "http_5xx": Counter(),
        "exceptions": Counter(),
        "celery": Counter(),
        "agents": Counter(),
    }
    for path in sorted(log_dir.glob("*.log")):
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        is_agent = path.name.startswith("agent-")
        for ln in lines:
            if is_agent:
                m = AGENT_PROBLEM.match(ln)
                if m:
                    out["agents"][f"{m.group(1)} {_IDS.sub('N', m.group(2))[:100]}"] += 1
                continue
            m = ACCESS_5XX.search(ln)
            if m:
                method, route, code = (m.group(1), m.group(2), m.group(3)) if m.group(1) else m.group(4, 5, 6)
                out["http_5xx"][f"{code} {method} {_IDS.sub('N', route)}"] += 1
                continue
            m = EXCEPTION_LINE.match(ln)
            if m:
                out["exceptions"][m.group(1)] += 1
                continue
            m = CELERY_ERROR.search(ln)
            if m:
                out["celery"][_IDS.sub("N", m.group(2))[:100]] += 1
    return out


# --- terraform's own time --------------------------------------------------------------------


def read_tf_calls(path: Path, agents_root: Path) -> list[TfCall]:
    """Lines `start end rc command pwd` written by the wrapper; pwd is
    <agents root>/<agent>/<workspace id>/<run id> (the agent's work dir layout)."""
    calls: list[TfCall] = []
    if not path.exists():
        return calls
    for ln in path.read_text(errors="replace").splitlines():
        parts = ln.split(" ", 4)
        if len(parts) != 5:
            continue
        try:
            start, end, rc = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            continue
        pwd = Path(parts[4])
        agent, ws, task = "?", None, None
        try:
            rel = pwd.relative_to(agents_root).parts
            agent = rel[0]
            ws = int(rel[1]) if len(rel) > 1 and rel[1].isdigit() else None
            task = int(rel[2]) if len(rel) > 2 and rel[2].isdigit() else None
        except (ValueError, IndexError):
            pass
        calls.append(TfCall(start, end, rc, parts[3], agent, ws, task))
    return calls


# --- time series and plot --------------------------------------------------------------------


def step_counts(intervals: list[tuple[float, float]], grid: list[float]) -> list[int]:
    starts = sorted(s for s, _ in intervals)
    ends = sorted(e for _, e in intervals)
    return [bisect.bisect_right(starts, t) - bisect.bisect_right(ends, t) for t in grid]


def plot_queue(
    path: Path,
    *,
    t0: float,
    t_end: float,
    jobs: list[JobRow],
    tasks: list[TaskRow],
    plan_created: dict[int, float],
    cpu: list[tuple[float, float, float]],
    total_slots: int,
    t_queued: float,
    title: str,
    subtitle: str,
) -> None:
    import matplotlib  # heavy: loaded only to plot, and Agg chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = max(0.1, (t_end - t0) / 2000)
    grid = [t0 + i * step for i in range(int((t_end - t0) / step) + 2)]
    xs = [t - t0 for t in grid]
    queued = [(j.created, j.claimed if j.claimed is not None else t_end) for j in jobs if queued_through_pool(j)]
    running = [(j.claimed, j.finished if j.finished is not None else t_end) for j in jobs if j.claimed is not None]
    # A run waits for its workspace (FIFO, one applyable run at a time) until its plan job exists.
    waiting = [(t.created, plan_created.get(t.id, t_end)) for t in tasks]
    finished = sorted(t.finished for t in tasks if t.finished is not None and t.status == "applied")

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    ax.step(xs, step_counts(queued, grid), where="post", label="jobs queued (waiting for an agent)", color="#e76f51")
    ax.step(xs, step_counts(running, grid), where="post", label="jobs running (claimed, not finished)", color="#2a9d8f")
    ax.step(
        xs,
        step_counts(waiting, grid),
        where="post",
        label="runs waiting for their workspace",
        color="#8d99ae",
        linestyle=":",
    )
    ax.axhline(total_slots, color="grey", linestyle="--", linewidth=1)
    ax.text(xs[-1], total_slots, f" {total_slots} slots", va="bottom", ha="right", fontsize=8, color="grey")
    for a in (ax, ax2):
        a.axvline(t_queued - t0, color="#6c757d", linewidth=0.8, linestyle="-.")
    ax.text(t_queued - t0, ax.get_ylim()[1], " all runs queued", va="top", ha="left", fontsize=7, color="#6c757d")
    ax.set_ylabel("count")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=10)

    ax2.step(
        [0.0] + [t - t0 for t in finished],
        range(len(finished) + 1),
        where="post",
        color="#264653",
        label="runs applied",
    )
    ax2.set_ylabel("applied")
    ax2.set_xlabel("seconds since the first run was queued")
    ax2.grid(True, alpha=0.3)
    if cpu:
        ax3 = ax2.twinx()
        ax3.plot([c[0] - t0 for c in cpu], [c[1] for c in cpu], color="#e9c46a", linewidth=0.8, label="CPU busy %")
        ax3.set_ylim(0, 105)
        ax3.set_ylabel("CPU %", color="#b8860b")
        lines = [ln for ln in ax2.get_lines() + ax3.get_lines() if not ln.get_label().startswith("_")]
        ax2.legend(lines, [ln.get_label() for ln in lines], loc="upper left", fontsize=8)
    fig.text(0.5, 0.005, subtitle, ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
