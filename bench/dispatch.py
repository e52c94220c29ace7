"""Dispatch under load: many auto-applied runs over many workspaces on a pool of agents.

    python -m bench.dispatch [--runs 300] [--workspaces 60] [--agents 6] [--slots 3]

Brings up its own platform (fresh database `iac_bench_dispatch` on the embedded PostgreSQL, a
Redis of its own, Daphne, a Celery worker with beat, real agent processes; control-loop
timings are the platform's defaults unless --short-timings), creates the workspaces with
`auto_apply` through the REST API, queues every run at once from --clients parallel API
clients (round-robin over the workspaces; the platform's queue rule then applies each
workspace's runs FIFO, one at a time) and waits until all are final, the deadline passes,
or no run finishes for --stall seconds (then the rest count as lost; Ctrl-C also reports).
Targets: 0 runs lost, 0 double claims, 0 double applies, queue -> claimed p50 <= 50 ms and
p99 <= 500 ms for jobs created while a slot was free.

"Created while a slot was free" is rebuilt from the rows: at the job's created_at, the
slots not running a job nor holding a warm reservation outnumbered the queued jobs ahead of
it. With more workspaces than slots the queue never empties until the end, so in the default
shape these are mostly the first burst; the jobs that waited for a slot are measured as
"slot freed -> claimed" (the previous job on the slot that ran it finished -> claimed).

The terraform config needs no provider download: one `terraform_data` whose
`triggers_replace = timestamp()` changes on every plan (so every run has changes and
applies), with a local-exec provisioner that appends "applied run=<run id> dir=<work dir>"
to a marker file of its workspace. The run id comes from the agent's work dir
(`<work root>/<workspace id>/<run id>`), so a run applied twice shows up twice.

Measured from:
- the database (Django ORM in this process, against the benchmark's database): Job
  created_at / claimed_at / finished_at, run statuses, apply paths;
- the agents' logs ("claimed <kind> job <id> for run <id>", "handed ..." for an apply that
  came with its plan's result): double claims;
- the marker files: double applies;
- a wrapper around the terraform binary that records each terraform process's start and
  end: terraform's own time, for the ideal wall time (sum / slots);
- PostgreSQL statement logging for the benchmark database (see bench/querylog.py for why):
  statements per dispatched job;
- psutil, sampled every 0.5 s: CPU load (terraform saturates this machine's cores, which
  shows in the tail latencies).

Results: bench/results/dispatch.{json,png}. The last line printed is machine-readable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform as pyplatform
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import django

from bench import dispatch_stats as ds
from bench.api import FINAL, Api
from bench.live import (
    RESULTS,
    BenchPlatform,
    PlatformRun,
    bench_admin,
    bench_platform,
    say,
    say_markdown,
    wait_for,
    write_results,
)
from bench.querylog import StatementCount, StatementLog, silence_this_process
from bench.report import markdown_table, text_table

# The platform's models and services are imported inside functions: only after django.setup().

DB_NAME = "iac_bench_dispatch"
TARGET_CLAIM_P50_MS = 50
TARGET_CLAIM_P99_MS = 500
# Auto-apply: the plan finished -> `terraform apply` running.
TARGET_HANDOFF_P50_MS = 300
TARGET_HANDOFF_P99_MS = 1500

# `timestamp()` is unknown until apply, so every plan replaces the resource: every run has
# changes (and auto-applies), and the provisioner, which runs on create only, runs exactly
# once per apply. local-exec runs in terraform's working directory, which the agent names
# <work root>/<workspace id>/<run id>: $PWD identifies the run (and the agent) that applied.
MAIN_TF = r"""
variable "marker_file" {
  type = string
}

resource "terraform_data" "bench" {
  input            = timestamp()
  triggers_replace = timestamp()

  provisioner "local-exec" {
    command = "echo \"applied run=$(basename \"$PWD\") dir=$PWD at=${self.input}\" >> ${var.marker_file}"
  }
}

output "applied_at" {
  value = terraform_data.bench.output
}
"""

# Times each terraform process the agents start (init, plan, show, apply): terraform's own
# time, without the agent's HTTP calls around it. A shell script, not Python, so the
# wrapper itself costs ~2 ms of CPU per call on an already saturated machine. One line per
# call, appended (< PIPE_BUF, so concurrent writers do not interleave).
TF_WRAPPER = """#!/bin/sh
# Written by bench.dispatch: runs {real} and records its start/end time.
start=$(date +%s.%N)
"{real}" "$@"
rc=$?
end=$(date +%s.%N)
echo "$start $end $rc $1 $PWD" >> "{times}"
exit $rc
"""

# An empty filesystem mirror as the only install source: terraform_data is built in, so
# init needs no provider; anything else would fail at once instead of reaching a registry.
TF_CLI_CONFIG = """provider_installation {{
  filesystem_mirror {{
    path    = "{mirror}"
    include = ["*/*/*"]
  }}
}}
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.dispatch", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=300, help="auto-applied plan_and_apply runs (default 300)")
    p.add_argument("--workspaces", type=int, default=60, help="workspaces the runs are spread over (default 60)")
    p.add_argument("--agents", type=int, default=6, help="agent processes (default 6)")
    p.add_argument("--slots", type=int, default=3, help="slots per agent (default 3)")
    p.add_argument(
        "--deadline",
        type=float,
        default=1800,
        help="seconds after the first run is queued by which every run must be final; "
        "runs not applied by then count as lost (default 1800)",
    )
    p.add_argument(
        "--clients",
        type=int,
        default=8,
        help="API clients queueing the runs in parallel (default 8): one client alone needs minutes for "
        "300 runs once terraform has the CPUs, and would measure the API rather than dispatch",
    )
    p.add_argument(
        "--stall",
        type=float,
        default=120,
        help="give up when no run has finished for this many seconds (default 120); the rest count as lost",
    )
    p.add_argument("--progress", type=float, default=3.0, help="seconds between progress lines (default 3)")
    p.add_argument("--cold", action="store_true", help="pool with warm_apply off: every apply prepares from scratch")
    p.add_argument(
        "--short-timings",
        action="store_true",
        help="bench/live.py's short control loops (heartbeat 1 s, offline after 3 s, sweep 1 s) "
        "instead of the platform's defaults",
    )
    p.add_argument("--no-query-log", action="store_true", help="do not log statements (no queries-per-job figure)")
    p.add_argument("--shared-redis", action="store_true", help="use the default embedded Redis")
    p.add_argument("--name", default="dispatch", help="base name of the result files in bench/results/")
    p.add_argument(
        "--human-share",
        type=float,
        default=0.1,
        help="share of the workspaces whose runs are confirmed the way a person does: through the API, "
        "--think seconds after the run reaches apply_pending, with the pool still full (default 0.1)",
    )
    p.add_argument("--think", type=float, default=3.0, help="a person's think time before Confirm (default 3 s)")
    p.add_argument(
        "--gate",
        action="store_true",
        help="exit 1 unless every gate holds: nothing lost or done twice, and the fast-path share of "
        "auto-applies at least --min-fast-share (a correctness property: the warm agent takes its apply); "
        "with --gate-timings also the plan done -> apply started targets",
    )
    p.add_argument("--min-fast-share", type=float, default=0.95, help="the fast-path gate (default 0.95)")
    p.add_argument("--gate-timings", action="store_true", help="with --gate: the hand-off p50/p99 targets too")
    args = p.parse_args()
    if not 0 <= args.human_share < 1:
        p.error("--human-share must be at least 0 and below 1")
    for name in ("runs", "workspaces", "agents", "slots", "clients"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.workspaces > args.runs:
        p.error("--workspaces cannot exceed --runs (every workspace gets at least one run)")
    return args


class CpuSampler:
    """CPU busy % (all cores) and the 1-minute load average, every `interval` seconds."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []  # (epoch s, cpu %, loadavg 1 min)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _run(self) -> None:
        import psutil

        psutil.cpu_percent(interval=None)  # the first call only sets the baseline
        while not self._stop.is_set():
            pct = psutil.cpu_percent(interval=self.interval)  # blocks for the interval
            self.samples.append((time.time(), pct, os.getloadavg()[0]))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)

    def latest(self) -> tuple[float, float]:
        return (self.samples[-1][1], self.samples[-1][2]) if self.samples else (float("nan"), os.getloadavg()[0])

    def between(self, start: float, end: float) -> list[tuple[float, float, float]]:
        return [s for s in self.samples if start <= s[0] <= end]


def runs_per_workspace(runs: int, workspaces: int) -> list[int]:
    base, extra = divmod(runs, workspaces)
    return [base + (1 if i < extra else 0) for i in range(workspaces)]


def write_terraform_tools(bench_dir: Path, var_dir: Path) -> tuple[dict[str, str], str, Path]:
    """The wrapper and CLI config for the agents; returns (agent env, real terraform, times file)."""
    from agents_app.agent.terraform import resolve_terraform

    real = resolve_terraform(var_dir)
    tools = bench_dir / "terraform"
    tools.mkdir(parents=True, exist_ok=True)
    times = tools / "times.log"
    times.unlink(missing_ok=True)
    wrapper = tools / "terraform"
    wrapper.write_text(TF_WRAPPER.format(real=real, times=times))
    wrapper.chmod(0o755)
    mirror = tools / "empty-mirror"
    mirror.mkdir(exist_ok=True)
    cli_config = tools / "terraform.tfrc"
    cli_config.write_text(TF_CLI_CONFIG.format(mirror=mirror))
    return {"IAC_TERRAFORM_BIN": str(wrapper), "TF_CLI_CONFIG_FILE": str(cli_config)}, real, times


def terraform_version(exe: str, cli_config: str) -> str:
    try:
        out = subprocess.run(
            [exe, "version", "-json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, CHECKPOINT_DISABLE="1", TF_CLI_CONFIG_FILE=cli_config),
        )
        return json.loads(out.stdout).get("terraform_version", "?")
    except Exception as exc:  # noqa: BLE001 - informational only
        return f"unknown ({exc})"


# --- reading the database ------------------------------------------------------------------


def _epoch(dt: datetime | None) -> float | None:
    return dt.timestamp() if dt is not None else None


def load_rows(pool_id: int) -> tuple[list[ds.JobRow], list[ds.TaskRow]]:
    """Jobs and runs of the benchmark's pool as plain rows. Tolerates both the Slot-id and the
    (agent, slot index) way of recording where a job ran, so that it can measure a
    database of either schema."""
    from tasks_app.dispatch.models import Job
    from tasks_app.models import Task

    job_fields = {f.name for f in Job._meta.get_fields()}
    slot_field = "slot_index" if "slot_index" in job_fields else ("slot_id" if "slot" in job_fields else None)
    cols = [
        "id",
        "kind",
        "task_id",
        "status",
        "created_at",
        "claimed_at",
        "finished_at",
        "agent_id",
        "target_agent_id",
        "fence",
    ]
    if slot_field:
        cols.append(slot_field)
    jobs: list[ds.JobRow] = []
    for r in Job.objects.filter(pool_id=pool_id).values(*cols):
        slot: Any = None
        if slot_field == "slot_index" and r["slot_index"] is not None and r["agent_id"] is not None:
            slot = (r["agent_id"], r["slot_index"])
        elif slot_field == "slot_id":
            slot = r["slot_id"]
        jobs.append(
            ds.JobRow(
                id=r["id"],
                kind=r["kind"],
                task=r["task_id"],
                status=r["status"],
                created=r["created_at"].timestamp(),
                claimed=_epoch(r["claimed_at"]),
                finished=_epoch(r["finished_at"]),
                agent=r["agent_id"],
                slot=slot,
                targeted=r["target_agent_id"] is not None,
                fence=r["fence"],
            )
        )
    tasks = [
        ds.TaskRow(
            id=r["id"],
            workspace=r["workspace_id"],
            status=r["status"],
            created=r["created_at"].timestamp(),
            finished=_epoch(r["finished_at"]),
            confirmed=_epoch(r["confirmed_at"]),
            apply_started=_epoch(r["apply_started_at"]),
            apply_path=r["apply_path"] or "",
            message=r["message"] or "",
            warmup_status=r["warmup_status"],
        )
        for r in Task.objects.filter(workspace__pool_id=pool_id).values(
            "id",
            "workspace_id",
            "status",
            "created_at",
            "finished_at",
            "confirmed_at",
            "apply_started_at",
            "apply_path",
            "message",
            "warmup_status",
        )
    ]
    return jobs, tasks


def progress_counts(pool_id: int) -> tuple[Counter[str], Counter[str]]:
    from django.db.models import Count

    from tasks_app.dispatch.models import Job
    from tasks_app.models import Task

    runs = Counter(
        {
            r["status"]: r["n"]
            for r in Task.objects.filter(workspace__pool_id=pool_id).values("status").annotate(n=Count("id"))
        }
    )
    jobs = Counter(
        {r["status"]: r["n"] for r in Job.objects.filter(pool_id=pool_id).values("status").annotate(n=Count("id"))}
    )
    return runs, jobs


# --- the benchmark -------------------------------------------------------------------------


class Dispatch:
    def __init__(self, args: argparse.Namespace, live: BenchPlatform, api: Api, agent_env: dict[str, str]) -> None:
        self.args = args
        self.live = live
        self.api = api
        self.agent_env = agent_env
        self.marker_dir = live.dir / "markers"
        self.pool_id = 0
        self.workspaces: list[int] = []
        self.human_workspaces: set[int] = set()  # confirmed by a "person" (see Humans)
        self.t0 = 0.0  # the first run queued (epoch s)
        self.t_queued = 0.0  # the last run queued
        self.t_end = 0.0  # every run final, or the deadline
        self.queue_http_ms: list[float] = []
        self.stalls: list[tuple[float, float]] = []  # (since t0, seconds without a run finishing)
        self.timed_out = False
        self.end_reason = ""
        self.lock = threading.Lock()
        self.idle_before: tuple[float, float] = (float("nan"), float("nan"))  # (CPU %, load avg) before we start
        self.queue_error: BaseException | None = None

    def setup(self) -> None:
        from agents_app.models import Agent
        from agents_app.services.agents import pool_create

        a = self.args
        pool, token = pool_create(name="dispatch", warm_apply=not a.cold, backend="static", slots_per_pod=a.slots)
        self.pool_id = pool.id
        if self.marker_dir.exists():
            for old in self.marker_dir.glob("*.log"):
                old.unlink()
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        humans = round(a.workspaces * a.human_share)
        say(
            f"==> {a.workspaces - humans} workspaces with auto_apply and {humans} confirmed by a person after "
            f"{a.think:g} s (REST API), pool 'dispatch' (warm_apply={not a.cold})"
        )
        for i in range(a.workspaces):
            name = f"dispatch-{i:03d}"
            auto = i < a.workspaces - humans  # the people's workspaces are spread by queue_order's round-robin
            ws = self.api.create_workspace(
                name,
                pool.id,
                {"main.tf": MAIN_TF},
                {"marker_file": str(self.marker_dir / f"{name}.log")},
                auto_apply=auto,
            )
            if bool(ws.get("auto_apply")) != auto:
                raise RuntimeError(f"workspace {name} was created with auto_apply={ws.get('auto_apply')}: {ws}")
            self.workspaces.append(ws["id"])
            if not auto:
                self.human_workspaces.add(ws["id"])
        say(f"==> starting {a.agents} agents x {a.slots} slots")
        names = [f"agent-{i + 1}" for i in range(a.agents)]
        for name in names:
            self.live.start_agent(token, name, env=self.agent_env, slots=a.slots, wait=False)

        def all_registered() -> bool:
            for name in names:
                if not self.live.agents[name].alive():
                    raise RuntimeError(f"agent {name} exited; see {self.live.agents[name].log_path}")
            return Agent.objects.filter(pool_id=pool.id, status="online").count() >= a.agents

        wait_for(all_registered, 60, f"{a.agents} agents to register", interval=0.2)

    def queue_order(self) -> list[int]:
        """Workspace ids, one entry per run, round-robin: the first run of every workspace
        comes first, so the pool is saturated from the start."""
        quotas = runs_per_workspace(self.args.runs, self.args.workspaces)
        return [ws for rnd in range(max(quotas)) for ws, quota in zip(self.workspaces, quotas) if rnd < quota]

    def queue_all(self) -> None:
        """POST every run, from --clients threads (each with its own HTTP session). Two runs
        of one workspace are `workspaces` positions apart in the order, so they are not in
        flight together when clients < workspaces; the platform's FIFO is by run id anyway."""
        order = self.queue_order()
        local = threading.local()

        def post(ws_id: int) -> None:
            if not hasattr(local, "api"):
                local.api = self.api.clone()
            t = time.perf_counter()
            local.api.queue(ws_id)
            ms = (time.perf_counter() - t) * 1000
            with self.lock:
                self.queue_http_ms.append(ms)

        self.t0 = time.time()
        try:
            with ThreadPoolExecutor(max_workers=self.args.clients, thread_name_prefix="queue") as pool:
                for future in [pool.submit(post, ws) for ws in order]:
                    future.result()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.queue_error = exc
        self.t_queued = time.time()

    def start_queueing(self) -> threading.Thread:
        thread = threading.Thread(target=self.queue_all, name="queue-all", daemon=True)
        thread.start()
        wait_for(lambda: self.t0 > 0, 10, "queueing to start", interval=0.01)
        return thread

    def wait_all_final(self, cpu: CpuSampler) -> None:
        """Until every run is final, the deadline passes, no run finishes for --stall seconds,
        or Ctrl-C: in the last three cases the report still comes, with the rest as lost."""
        try:
            self._wait_all_final(cpu)
        except KeyboardInterrupt as exc:
            self.timed_out = True
            self.end_reason = f"interrupted ({str(exc) or 'Ctrl-C'})"
            self.t_end = time.time()
            say(f"==> {self.end_reason}: reporting what was reached")

    def _wait_all_final(self, cpu: CpuSampler) -> None:
        total = self.args.runs
        deadline = self.t0 + self.args.deadline
        last_line = 0.0
        last_done, last_change = -1, time.time()
        while True:
            if self.queue_error is not None:
                raise RuntimeError(f"queueing the runs failed: {self.queue_error}") from self.queue_error
            runs, jobs = progress_counts(self.pool_id)
            done = sum(n for s, n in runs.items() if s in FINAL)
            now = time.time()
            if done != last_done:
                if last_done >= 0 and now - last_change >= 30:
                    self.stalls.append((last_change - self.t0, now - last_change))
                last_done, last_change = done, now
            if now - last_line >= self.args.progress or done >= total:
                pct, load = cpu.latest()
                others = ", ".join(f"{s} {n}" for s, n in sorted(runs.items()) if s not in ("applied",) and n)
                queued = "" if self.t_queued else f"queued {sum(runs.values())}/{total}, "
                say(
                    f"[{now - self.t0:6.1f}s] {queued}applied {runs.get('applied', 0)}/{total} "
                    f"({others or 'none left'}) | "
                    f"jobs queued {jobs.get('queued', 0)}, running {jobs.get('running', 0)} | "
                    f"cpu {pct:.0f}% load {load:.1f}"
                )
                if now - last_change >= 30 and done < total:
                    say(f"          no run finished for {now - last_change:.0f}s")
                last_line = now
            if done >= total and self.t_queued:
                self.t_end = now
                return
            if now > deadline or now - last_change > self.args.stall:
                self.timed_out = True
                self.t_end = now
                self.end_reason = (
                    f"deadline: {total - done} run(s) not final after {self.args.deadline:g}s"
                    if now > deadline
                    else f"stalled: no run finished for {now - last_change:.0f}s, {total - done} run(s) not final"
                )
                say(f"==> {self.end_reason}")
                return
            time.sleep(1.0)


class Humans:
    """People confirming by hand: each run of a --human-share workspace is confirmed through
    the API --think seconds after it is seen at apply_pending (polled every 0.2 s), each by a
    client of its own, while the auto-applied runs keep the pool full."""

    def __init__(self, bench: Dispatch) -> None:
        self.bench = bench
        self.stop = threading.Event()
        self.seen: dict[int, float] = {}  # run -> when seen at apply_pending
        self.confirmed: dict[int, float] = {}  # run -> when its Confirm answered
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name="humans", daemon=True)

    def start(self) -> None:
        if self.bench.human_workspaces:
            self.thread.start()

    def _run(self) -> None:
        from django.db import connection

        from tasks_app.models import Task

        def confirm(run_id: int, at: float) -> None:
            time.sleep(max(0.0, at - time.time()))
            try:
                self.bench.api.clone().confirm(run_id)
                self.confirmed[run_id] = time.time()
            except Exception as exc:  # noqa: BLE001 - reported (a run discarded as stale answers 409)
                self.errors.append(f"run {run_id}: {exc}")

        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="human") as pool:
            try:
                while not self.stop.is_set():
                    pending = Task.objects.filter(
                        workspace_id__in=self.bench.human_workspaces, status="apply_pending"
                    ).values_list("id", flat=True)
                    now = time.time()
                    for run_id in pending:
                        if run_id not in self.seen:
                            self.seen[run_id] = now
                            pool.submit(confirm, run_id, now + self.bench.args.think)
                    self.stop.wait(0.2)
            finally:
                connection.close()


# --- report --------------------------------------------------------------------------------


def analyse(
    bench: Dispatch, cpu: CpuSampler, stmts: StatementCount | None, tf_times: Path, total_slots: int
) -> dict[str, Any]:
    jobs, tasks = load_rows(bench.pool_id)
    t0 = bench.t0
    last_final = max((t.finished for t in tasks if t.finished is not None), default=bench.t_end)
    t_end = max(bench.t_end, last_final)

    # Runs: applied, lost (not applied by the deadline: still running or ended otherwise).
    by_status = Counter(t.status for t in tasks)
    applied = [t for t in tasks if t.status == "applied"]
    lost = [t for t in tasks if t.status != "applied"]
    missing = bench.args.runs - len(tasks)  # queued through the API but no row: lost as well

    # Double claims: a job handed out more than once, from the agents' own logs; fence > 1
    # is the server's record of re-assigning a job (legitimate when the first holder never
    # started it, e.g. an unacknowledged warm apply or a dead agent's plan).
    claims = ds.agent_claims(sorted(bench.live.log_dir.glob("agent-*.log")))
    double_claimed = {jid: [a for a, _ in seen] for jid, seen in claims.items() if len(seen) > 1}
    reassigned = [j.id for j in jobs if j.fence > 1]
    dispatched = [j for j in jobs if j.claimed is not None]
    claim_lines = sum(len(v) for v in claims.values())

    # Double applies: a run whose provisioner ran more than once.
    per_run, per_file, unparsed = ds.marker_applies(bench.marker_dir)
    double_applies = {rid: n for rid, n in per_run.items() if n > 1}
    applied_ids = {t.id for t in applied}
    applied_unmarked = sorted(applied_ids - set(per_run))
    marked_not_applied = sorted(set(per_run) - applied_ids)

    # Claim latencies and slot occupancy.
    occ = ds.Occupancy(jobs, t_end)
    lat = ds.claim_latencies(jobs, occ, total_slots)
    free = ds.dist(lat.free_slot_ms)
    # The same jobs up to the agent's own "claimed" log line: the claim answer's way back
    # (commit, HTTP response, the agent's thread) on top of the claim transaction.
    jobs_by_id = {j.id: j for j in jobs}
    at_agent_ms = [
        (min(when for _, when in claims[jid]) - jobs_by_id[jid].created) * 1000
        for jid in lat.free_slot_jobs
        if jid in claims
    ]
    freed = ds.dist(lat.slot_freed_ms)
    allq = ds.dist(lat.all_queued_ms)

    # The auto-apply hand-off: plan finished -> `terraform apply` started (agent timestamp),
    # and the workspace queue rule: a run final -> the next run's plan job created.
    plans = {j.task: j for j in jobs if j.kind == "plan"}
    auto_applied = [t for t in applied if t.workspace not in bench.human_workspaces]
    human_applied = [t for t in applied if t.workspace in bench.human_workspaces]
    handoff_ms = [
        (t.apply_started - plans[t.id].finished) * 1000
        for t in auto_applied
        if t.apply_started is not None and t.id in plans and plans[t.id].finished is not None
    ]
    human_ms = [
        (t.apply_started - t.confirmed) * 1000
        for t in human_applied
        if t.apply_started is not None and t.confirmed is not None
    ]

    def fast_share(runs: list[ds.TaskRow]) -> float | None:
        return sum(1 for t in runs if t.apply_path == "fast") / len(runs) if runs else None
    fifo_ms: list[float] = []
    by_ws: dict[int, list[ds.TaskRow]] = defaultdict(list)
    for t in tasks:
        by_ws[t.workspace].append(t)
    for seq in by_ws.values():
        seq.sort(key=lambda t: t.id)
        for prev, nxt in zip(seq, seq[1:]):
            # From when the next run could start: the previous one final and the next one
            # queued (queueing 300 runs takes a while, so the next may come after).
            if prev.finished is not None and nxt.id in plans:
                fifo_ms.append((plans[nxt.id].created - max(prev.finished, nxt.created)) * 1000)

    # CPU: while runs were being applied (not an idle tail after a stall), and around the
    # slowest free-slot claims (the p99 tail).
    window = cpu.between(t0, last_final)
    cpu_mean = sum(s[1] for s in window) / len(window) if window else float("nan")
    load_mean = sum(s[2] for s in window) / len(window) if window else float("nan")
    load_max = max((s[2] for s in window), default=float("nan"))
    tail_cpu = float("nan")
    if lat.free_slot_ms:
        cut = ds.percentile(lat.free_slot_ms, 90)
        around: list[float] = []
        for jid, ms in zip(lat.free_slot_jobs, lat.free_slot_ms):
            if ms >= cut:
                j = jobs_by_id[jid]
                around += [s[1] for s in cpu.between(j.created - 0.5, (j.claimed or j.created) + 0.5)]
        tail_cpu = sum(around) / len(around) if around else float("nan")

    # Terraform's own time and the ideal wall time.
    # Only calls in a job's work dir: the agent also runs `terraform version` at start.
    calls = [c for c in ds.read_tf_calls(tf_times, bench.live.dir / "agents") if c.task is not None]
    tf_total = sum(c.seconds for c in calls)
    tf_by_cmd: dict[str, float] = defaultdict(float)
    tf_n: Counter[str] = Counter()
    per_ws_chain: dict[int, float] = defaultdict(float)
    for c in calls:
        tf_by_cmd[c.command] += c.seconds
        tf_n[c.command] += 1
        if c.workspace is not None:
            per_ws_chain[c.workspace] += c.seconds
    job_seconds = sum((j.finished - j.claimed) for j in dispatched if j.finished is not None)
    wall = last_final - t0
    ideal = tf_total / total_slots
    chain = max(per_ws_chain.values(), default=0.0)

    # Longest time without any run finishing (a stall shows here even if it recovered).
    finishes = sorted([t0] + [t.finished for t in tasks if t.finished is not None])
    gaps = [(b - a, a - t0) for a, b in zip(finishes, finishes[1:])]
    longest_gap = max(gaps, default=(0.0, 0.0))

    n_jobs = len(dispatched)
    problems = ds.log_problems(bench.live.log_dir)
    return {
        "runs": bench.args.runs,
        "workspaces": bench.args.workspaces,
        "agents": bench.args.agents,
        "slots": total_slots,
        "applied": len(applied),
        "lost": len(lost) + missing,
        "lost_by_status": dict(Counter(t.status for t in lost)),
        "lost_examples": [
            {
                "run": t.id,
                "status": t.status,
                "message": f"warmup {t.warmup_status}, {'confirmed' if t.confirmed else 'never confirmed'}; "
                f"last message: {t.message[:200]!r}",
                "behind": blocker(t, by_ws),
            }
            for t in sorted(lost, key=lambda t: t.id)[:8]
        ],
        "slowest_claims": [
            {"job": j.id, "kind": j.kind, "run": j.task, "ms": round((j.claimed - j.created) * 1000)}
            for j in sorted(
                (j for j in jobs if ds.queued_through_pool(j) and j.claimed is not None),
                key=lambda j: j.claimed - j.created,  # type: ignore[operator]
                reverse=True,
            )[:3]
        ],
        "by_status": dict(by_status),
        "apply_paths": dict(Counter(t.apply_path or "-" for t in applied)),
        "jobs": dict(Counter(j.kind for j in jobs)),
        "jobs_dispatched": n_jobs,
        "claim_lines": claim_lines,
        "double_claims": len(double_claimed),
        "double_claimed": {str(k): v for k, v in list(double_claimed.items())[:20]},
        "reassigned_jobs": len(reassigned),
        "double_applies": sum(n - 1 for n in double_applies.values()),
        "double_applied_runs": {str(k): v for k, v in list(double_applies.items())[:20]},
        "applied_without_marker": applied_unmarked[:20],
        "marker_without_applied_run": marked_not_applied[:20],
        "marker_lines": sum(per_file.values()),
        "marker_unparsed": unparsed,
        "claim_free_slot_ms": free,
        "claim_free_slot_at_agent_ms": ds.dist(at_agent_ms),
        "slot_freed_to_claim_ms": freed,
        "claim_all_queued_ms": allq,
        "requeued_targeted_ms": ds.dist(lat.requeued_targeted_ms),
        "never_claimed": lat.never_claimed[:20],
        "plan_done_to_apply_start_ms": ds.dist(handoff_ms),
        "auto_applied": len(auto_applied),
        "fast_share": fast_share(auto_applied),
        "human_applied": len(human_applied),
        "human_fast_share": fast_share(human_applied),
        "human_apply_paths": dict(Counter(t.apply_path or "-" for t in human_applied)),
        "human_confirm_to_apply_start_ms": ds.dist(human_ms),
        "run_final_to_next_plan_ms": ds.dist(fifo_ms),
        "queue_http_ms": ds.dist(bench.queue_http_ms),
        "cpu_mean_pct": cpu_mean,
        "cpu_tail_pct": tail_cpu,
        "load1_mean": load_mean,
        "load1_max": load_max,
        "cpus": os.cpu_count(),
        "statements": None
        if stmts is None
        else {
            "total": stmts.total,
            "txn_control": stmts.txn_control,
            "queries": stmts.queries,
            "per_job": stmts.queries / n_jobs if n_jobs else None,
            "per_run": stmts.queries / len(tasks) if tasks else None,
            "all_per_job": stmts.total / n_jobs if n_jobs else None,
            "log_bytes": stmts.log_bytes,
            "top": stmts.shapes.most_common(),
        },
        "terraform": {
            "calls": dict(tf_n),
            "seconds_by_command": {k: round(v, 1) for k, v in tf_by_cmd.items()},
            "failed_calls": sum(1 for c in calls if c.rc not in (0, 2)),
            "total_s": tf_total,
        },
        "job_seconds": job_seconds,
        "wall_s": wall,
        "ideal_s": ideal,
        "ideal_job_s": job_seconds / total_slots,
        "longest_workspace_chain_s": chain,
        "efficiency": ideal / wall if wall > 0 else None,
        "wall_over_ideal": wall / ideal if ideal > 0 else None,
        "longest_gap_s": longest_gap[0],
        "longest_gap_at_s": longest_gap[1],
        "stalls": bench.stalls,
        "queue_s": bench.t_queued - t0,
        "clients": bench.args.clients,
        "log_problems": {k: dict(v.most_common()) for k, v in problems.items()},
        "db_errors": dict(stmts.errors.most_common()) if stmts is not None else None,
        "db_errors_other_databases": stmts.other_errors if stmts is not None else None,
        "cpu_before_pct": bench.idle_before[0],
        "load1_before": bench.idle_before[1],
        "timed_out": bench.timed_out,
        "end_reason": bench.end_reason,
    }


def blocker(task: ds.TaskRow, by_ws: dict[int, list[ds.TaskRow]]) -> str:
    """For a run still pending: the earlier run of its workspace that holds the queue."""
    if task.status != "pending":
        return ""
    for other in sorted(by_ws[task.workspace], key=lambda t: t.id):
        if other.id < task.id and other.status not in FINAL:
            return f"run {other.id} ({other.status})"
    return ""


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.0f}%"


def _ok(good: bool) -> str:
    return "ok" if good else "MISSED"


def table(s: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    free, freed, allq = s["claim_free_slot_ms"], s["slot_freed_to_claim_ms"], s["claim_all_queued_ms"]
    handoff, fifo = s["plan_done_to_apply_start_ms"], s["run_final_to_next_plan_ms"]
    st = s["statements"]
    paths = ", ".join(f"{k} {v}" for k, v in sorted(s["apply_paths"].items())) or "-"
    cpu = (
        f"CPU {_pct(s['cpu_tail_pct'])} around the slowest 10%; run mean {_pct(s['cpu_mean_pct'])} "
        f"(before start {_pct(s['cpu_before_pct'])})"
    )
    rows = [
        ["runs applied", f"{s['applied']}/{s['runs']}", "all", _ok(s["applied"] == s["runs"]), f"apply paths: {paths}"],
        [
            "runs lost",
            str(s["lost"]),
            "0",
            _ok(s["lost"] == 0),
            (s["end_reason"] + "; " if s["end_reason"] else "")
            + (", ".join(f"{k} {v}" for k, v in s["lost_by_status"].items()) or "-"),
        ],
        [
            "double claims",
            str(s["double_claims"]),
            "0",
            _ok(s["double_claims"] == 0),
            f"{s['claim_lines']} claim lines in agent logs for {s['jobs_dispatched']} jobs; "
            f"{s['reassigned_jobs']} re-assigned by the server (fence > 1)",
        ],
        [
            "double applies",
            str(s["double_applies"]),
            "0",
            _ok(s["double_applies"] == 0),
            f"{s['marker_lines']} marker lines; applied w/o marker {len(s['applied_without_marker'])}, "
            f"marker w/o applied run {len(s['marker_without_applied_run'])}",
        ],
        [
            "queue → claimed, slot free: p50",
            fmt(free["p50"]),
            f"≤ {TARGET_CLAIM_P50_MS} ms",
            _ok(free["p50"] is not None and free["p50"] <= TARGET_CLAIM_P50_MS),
            f"n={free['n']} jobs created while a slot was free",
        ],
        [
            "queue → claimed, slot free: p99",
            fmt(free["p99"]),
            f"≤ {TARGET_CLAIM_P99_MS} ms",
            _ok(free["p99"] is not None and free["p99"] <= TARGET_CLAIM_P99_MS),
            f"max {fmt(free['max'])} ms; {cpu}; load avg {s['load1_mean']:.1f} mean / {s['load1_max']:.1f} max "
            f"on {s['cpus']} CPUs",
        ],
        [
            "warm applies not taken at once",
            str(s["requeued_targeted_ms"]["n"]),
            "",
            "",
            f"for the reserving agent, but re-queued (push not acknowledged in time) or held for a warmup; "
            f"Confirm → claimed {fmt(s['requeued_targeted_ms']['p50'])} ms median, "
            f"max {fmt(s['requeued_targeted_ms']['max'])} ms",
        ],
        [
            "queue → agent has it, slot free",
            f"{fmt(s['claim_free_slot_at_agent_ms']['p50'])} / {fmt(s['claim_free_slot_at_agent_ms']['p99'])}",
            "",
            "",
            f"p50 / p99 ms, same jobs, to the agent's 'claimed' log line, "
            f"max {fmt(s['claim_free_slot_at_agent_ms']['max'])} ms",
        ],
        [
            "slot freed → claimed (jobs that waited)",
            f"{fmt(freed['p50'])} / {fmt(freed['p99'])}",
            "",
            "",
            f"p50 / p99 ms, n={freed['n']}, max {fmt(freed['max'])} ms",
        ],
        [
            "queue → claimed, all queued jobs",
            f"{fmt(allq['p50'])} / {fmt(allq['p99'])}",
            "",
            "",
            f"p50 / p99 ms incl. waiting for a slot, n={allq['n']}, max {fmt(allq['max'])} ms",
        ],
        [
            "auto-applies on the fast path",
            _pct(None if s["fast_share"] is None else 100 * s["fast_share"]),
            f"≥ {100 * s['min_fast_share']:.0f}%",
            _ok(s["fast_share"] is not None and s["fast_share"] >= s["min_fast_share"]),
            f"n={s['auto_applied']} auto-applied runs (the warm agent took its apply)",
        ],
        [
            "auto-apply: plan done → apply started",
            f"{fmt(handoff['p50'])} / {fmt(handoff['p99'])}",
            f"≤ {TARGET_HANDOFF_P50_MS} / {TARGET_HANDOFF_P99_MS} ms",
            _ok(handoff["p50"] is not None and handoff["p50"] <= TARGET_HANDOFF_P50_MS
                and handoff["p99"] is not None and handoff["p99"] <= TARGET_HANDOFF_P99_MS),
            f"p50 / p99 ms, n={handoff['n']}, max {fmt(handoff['max'])} ms",
        ],
        [
            "people's Confirm: on the fast path",
            _pct(None if s["human_fast_share"] is None else 100 * s["human_fast_share"]),
            "",
            "",
            f"n={s['human_applied']} runs confirmed through the API after a think time, on the full pool; "
            f"paths: {', '.join(f'{k} {v}' for k, v in sorted(s['human_apply_paths'].items())) or '-'}; "
            f"Confirm → apply started p50 / p99 {fmt(s['human_confirm_to_apply_start_ms']['p50'])} / "
            f"{fmt(s['human_confirm_to_apply_start_ms']['p99'])} ms",
        ],
        [
            "workspace FIFO: run final → next plan queued",
            f"{fmt(fifo['p50'])} / {fmt(fifo['p99'])}",
            "",
            "",
            f"p50 / p99 ms, n={fifo['n']}, max {fmt(fifo['max'])} ms",
        ],
        [
            "DB queries per dispatched job",
            "-" if not st or st["per_job"] is None else f"{st['per_job']:.1f}",
            "",
            "",
            "statement logging off"
            if not st
            else f"{st['queries']} queries (+{st['txn_control']} BEGIN/COMMIT/SAVEPOINT/SET) for "
            f"{s['jobs_dispatched']} jobs = {st['per_run']:.1f} per run; all platform processes",
        ],
        [
            "wall time vs ideal",
            f"{s['wall_s']:.0f} s / {s['ideal_s']:.0f} s",
            "",
            "",
            f"ideal = terraform's own time {s['terraform']['total_s']:.0f} s / {s['slots']} slots "
            f"(efficiency {100 * (s['efficiency'] or 0):.0f}%); job claim→finish / slots "
            f"{s['ideal_job_s']:.0f} s; longest workspace chain {s['longest_workspace_chain_s']:.0f} s",
        ],
        [
            "queue a run (POST /runs/)",
            f"{fmt(s['queue_http_ms']['p50'])} / {fmt(s['queue_http_ms']['p99'])}",
            "",
            "",
            f"p50 / p99 ms of the API call, n={s['queue_http_ms']['n']}, {s['clients']} clients, "
            f"all queued in {s['queue_s']:.1f} s while terraform runs",
        ],
        [
            "errors in the logs",
            str(sum(sum(v.values()) for v in s["log_problems"].values()) + sum((s["db_errors"] or {}).values())),
            "",
            "",
            "; ".join(
                f"{label} {sum(c.values())}"
                for label, c in (
                    ("HTTP 5xx", s["log_problems"]["http_5xx"]),
                    ("exception lines", s["log_problems"]["exceptions"]),
                    ("celery errors", s["log_problems"]["celery"]),
                    ("agent warnings", s["log_problems"]["agents"]),
                    ("PostgreSQL errors", s["db_errors"] or {}),
                )
            )
            + " (details below)",
        ],
        [
            "longest time without a run finishing",
            f"{s['longest_gap_s']:.1f} s",
            "",
            "",
            f"at +{s['longest_gap_at_s']:.0f} s",
        ],
    ]
    header = ["metric", "value", "target", "", "detail"]
    return header, rows


TABLE_ALIGN = "lrrll"


def fmt(value: float | None) -> str:
    return ds.fmt_ms(value)


def last_line(s: dict[str, Any]) -> str:
    free = s["claim_free_slot_ms"]
    st = s["statements"]

    def num(v: float | None, digits: int = 0) -> str:
        return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    return (
        f"runs={s['runs']} lost={s['lost']} double_claims={s['double_claims']} double_applies={s['double_applies']} "
        f"claim_p50_ms={num(free['p50'])} claim_p99_ms={num(free['p99'])} claim_n={free['n']} "
        f"slot_freed_p50_ms={num(s['slot_freed_to_claim_ms']['p50'])} "
        f"slot_freed_p99_ms={num(s['slot_freed_to_claim_ms']['p99'])} "
        f"cpu_pct={num(s['cpu_mean_pct'])} cpu_tail_pct={num(s['cpu_tail_pct'])} load1={num(s['load1_mean'], 1)} "
        f"queries_per_job={num(st['per_job'] if st else None, 1)} "
        f"wall_s={num(s['wall_s'])} ideal_s={num(s['ideal_s'])} "
        f"fast_share={num(s['fast_share'], 3)} "
        f"plan_to_apply_p50_ms={num(s['plan_done_to_apply_start_ms']['p50'])} "
        f"plan_to_apply_p99_ms={num(s['plan_done_to_apply_start_ms']['p99'])} "
        f"human_fast_share={num(s['human_fast_share'], 3)} "
        f"wall_over_ideal={num(s['wall_over_ideal'], 2)}"
    )


def gates(s: dict[str, Any], *, timings: bool) -> list[str]:
    """The gates that failed (empty: all hold): nothing lost or done twice, the fast-path
    share of auto-applies; with `timings`, the hand-off targets."""
    failed = []
    if s["lost"]:
        failed.append(f"{s['lost']} run(s) lost")
    if s["double_claims"]:
        failed.append(f"{s['double_claims']} job(s) claimed twice")
    if s["double_applies"]:
        failed.append(f"{s['double_applies']} double apply(ies)")
    if s["fast_share"] is None or s["fast_share"] < s["min_fast_share"]:
        failed.append(f"fast-path share of auto-applies {s['fast_share']} < {s['min_fast_share']}")
    handoff = s["plan_done_to_apply_start_ms"]
    if timings and not (handoff["p50"] is not None and handoff["p50"] <= TARGET_HANDOFF_P50_MS):
        failed.append(f"plan done -> apply started p50 {fmt(handoff['p50'])} ms > {TARGET_HANDOFF_P50_MS} ms")
    if timings and not (handoff["p99"] is not None and handoff["p99"] <= TARGET_HANDOFF_P99_MS):
        failed.append(f"plan done -> apply started p99 {fmt(handoff['p99'])} ms > {TARGET_HANDOFF_P99_MS} ms")
    return failed


def machine_idle_check() -> tuple[float, float]:
    """CPU busy % over one second and the load average before anything starts: the results
    mean little if something else (a test suite) shares the cores."""
    import psutil

    busy = psutil.cpu_percent(interval=1.0)
    load = os.getloadavg()[0]
    if busy > 25:  # the load average lags by a minute: a run that just ended still shows in it
        say(
            f"==> WARNING: the machine is not idle before the benchmark (CPU {busy:.0f}% busy, load avg {load:.1f}): "
            "other processes will share the cores with terraform and the platform"
        )
    return busy, load


def main() -> int:
    args = parse_args()
    idle_before = machine_idle_check()
    live = bench_platform(
        db_name=DB_NAME,
        subdir="bench-dispatch",
        server_timings=None if args.short_timings else {},
        shared_redis=args.shared_redis,
    )
    var_dir = live.var_dir
    cpu = CpuSampler()
    bench: Dispatch | None = None
    qlog: StatementLog | None = None
    meta: dict[str, Any] = {}
    run = PlatformRun(
        live, "==> stopping agents, worker, web" + ("" if args.shared_redis else " and the benchmark's redis")
    )
    run.on_stop(cpu.stop)
    with run:
        external_db = bool(os.environ.get("DATABASE_URL"))
        live.bootstrap_env()
        if args.no_query_log:
            pass
        elif external_db:
            say("==> DATABASE_URL is set: its server's log is not ours to read; not counting queries")
        else:
            # pgserver starts postgres with `pg_ctl -l <data dir>/log`.
            qlog = StatementLog(live.server_url, DB_NAME, var_dir / "pg" / "log")
        django.setup()
        silence_this_process()
        agent_env, tf_real, tf_times = write_terraform_tools(live.dir, var_dir)
        tf_version = terraform_version(tf_real, agent_env["TF_CLI_CONFIG_FILE"])
        say(f"==> agents run terraform {tf_real} (v{tf_version}) through a timing wrapper")
        live.migrate()
        if qlog is not None:
            if not qlog.log_path.exists():
                say(f"==> no PostgreSQL log at {qlog.log_path} (DATABASE_URL set?): not counting queries")
                qlog = None
            else:
                qlog.enable()
        base = live.start_servers()
        api = Api(base, bench_admin()[1])
        bench = Dispatch(args, live, api, agent_env)
        bench.idle_before = idle_before
        bench.setup()
        humans = Humans(bench)
        cpu.start()
        say(
            f"==> {args.runs} runs over {args.workspaces} workspaces on {args.agents} agents x {args.slots} slots "
            f"(targets: 0 lost, 0 double claims, 0 double applies, claim p50 <= {TARGET_CLAIM_P50_MS} ms, "
            f"p99 <= {TARGET_CLAIM_P99_MS} ms)"
        )
        if qlog is not None:
            qlog.mark_start()
        queue_thread = bench.start_queueing()
        humans.start()
        bench.wait_all_final(cpu)
        humans.stop.set()
        queue_thread.join(5)
        if not bench.t_queued:  # stopped while still queueing
            bench.t_queued = bench.t_end
        say(f"==> queueing took {bench.t_queued - bench.t0:.1f}s ({args.clients} clients)")
        if qlog is not None:
            qlog.mark_end()
        meta = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "terraform": tf_real,
            "terraform_version": tf_version,
            "python": pyplatform.python_version(),
            "cpus": os.cpu_count(),
            "warm_apply": not args.cold,
            "server_env": {k: v for k, v in live.server_env().items() if k.startswith("IAC_") and "KEY" not in k},
            "redis": "shared" if args.shared_redis else "own",
            "query_count": "log_statement=all on the benchmark database" if qlog else "off",
        }
    if run.failure is not None:
        return run.exit_code()

    assert bench is not None
    stmts = qlog.count() if qlog is not None else None
    total_slots = args.agents * args.slots
    summary = analyse(bench, cpu, stmts, tf_times, total_slots)
    summary["human_confirm_errors"] = humans.errors[:20]
    summary["min_fast_share"] = args.min_fast_share

    jobs, tasks = load_rows(bench.pool_id)
    plan_created = {j.task: j.created for j in jobs if j.kind == "plan"}
    json_path = write_results(
        args.name,
        {
            "meta": meta,
            "args": vars(args),
            "t0": bench.t0,
            "summary": summary,
            "jobs": [asdict(j) for j in jobs],
            "runs": [asdict(t) for t in tasks],
            "cpu": cpu.samples,
        },
        indent=1,
    )
    png_path = RESULTS / f"{args.name}.png"
    free = summary["claim_free_slot_ms"]
    ds.plot_queue(
        png_path,
        t0=bench.t0,
        t_end=max(bench.t_end, bench.t0 + summary["wall_s"]),
        jobs=jobs,
        tasks=tasks,
        plan_created=plan_created,
        cpu=cpu.samples,
        total_slots=total_slots,
        t_queued=bench.t_queued,
        title=(
            f"Dispatch: {args.runs} auto-applied runs, {args.workspaces} workspaces, {args.agents} agents × "
            f"{args.slots} slots, terraform {tf_version}, {os.cpu_count()} CPUs"
        ),
        subtitle=(
            f"applied {summary['applied']}/{args.runs}, lost {summary['lost']}, double claims "
            f"{summary['double_claims']}, double applies {summary['double_applies']}; queue → claimed (slot free) "
            f"p50 {fmt(free['p50'])} ms, p99 {fmt(free['p99'])} ms (n={free['n']}); wall {summary['wall_s']:.0f} s, "
            f"ideal {summary['ideal_s']:.0f} s; CPU mean {_pct(summary['cpu_mean_pct'])}"
        ),
    )

    header, rows = table(summary)
    say("")
    say(
        f"targets: 0 lost, 0 double claims, 0 double applies, queue → claimed (slot free) "
        f"p50 ≤ {TARGET_CLAIM_P50_MS} ms, p99 ≤ {TARGET_CLAIM_P99_MS} ms"
    )
    say(text_table(header, rows, TABLE_ALIGN))
    if summary["statements"] and summary["statements"]["top"]:
        say("")
        say("most frequent statements (literals blanked):")
        for sql, n in summary["statements"]["top"][:8]:
            say(f"  {n:7d}  {sql}")
    tf = summary["terraform"]
    say("")
    say(
        "terraform's own time by command: "
        + ", ".join(
            f"{k} {v:.0f} s ({tf['calls'].get(k, 0)} calls)" for k, v in sorted(tf["seconds_by_command"].items())
        )
        + (f"; {tf['failed_calls']} failed calls" if tf["failed_calls"] else "")
    )
    problems = list(summary["log_problems"].items()) + [("postgresql", summary["db_errors"] or {})]
    if any(found for _, found in problems):
        say("problems in the logs (numbers blanked as N):")
        for label, found in problems:
            for what, n in list(found.items())[:10]:
                say(f"  {label}: {n} x {what}")
    if summary["lost_examples"]:
        say("lost runs (first 8):")
        for e in summary["lost_examples"]:
            say(f"  run {e['run']} {e['status']}: {e['behind'] and 'waiting behind ' + e['behind'] or e['message']}")
    if summary["slowest_claims"]:
        say(
            "slowest queue → claimed: "
            + "; ".join(f"{c['kind']} job {c['job']} of run {c['run']} {c['ms']} ms" for c in summary["slowest_claims"])
        )
    if summary["double_claimed"]:
        say(f"double-claimed jobs (job -> agents): {summary['double_claimed']}")
    if summary["double_applied_runs"]:
        say(f"double-applied runs (run -> applies): {summary['double_applied_runs']}")
    if summary["never_claimed"]:
        say(f"queued jobs never claimed: {summary['never_claimed']}")
    say_markdown(markdown_table(header, rows, TABLE_ALIGN))
    say(f"raw: {json_path}")
    say(f"plot: {png_path}")
    say(f"logs: {live.log_dir}")
    if summary["human_confirm_errors"]:
        say(f"people's Confirm errors: {summary['human_confirm_errors']}")
    failed = gates(summary, timings=args.gate_timings)
    say("gates: " + ("all hold" if not failed else "FAILED: " + "; ".join(failed)))
    say(last_line(summary))
    return 1 if args.gate and failed else 0


if __name__ == "__main__":
    sys.exit(main())
