"""`terraform apply` through a `cloud {}` block (answered `yes` by a pty) against the bare
CLI with the HTTP state backend, interleaved.

    python -m bench.cli_apply [--runs 15]       # make bench-cli

Brings up its own platform (fresh database `iac_bench_cli`, its own Redis, Daphne, a Celery
worker with beat, one agent with 3 slots on a warm pool), the one-resource configuration
(`terraform_data` with a change in every plan), and alternates:

- cloud: `terraform apply` in a dir whose `cloud` block names the platform (the CLI config
  `make run` writes: tasks_app/tfe/cli_config.py), `yes` typed the moment the prompt shows;
- bare:  the same CLI in a dir with `backend "http"` on the platform's state backend:
  `init` + `plan -out` (cold), `plan -out` again in the initialised dir (warm), then
  `apply plan.out`.

The CLI sleeps at least 1 s before its first poll of a run and backs off its log reads, so
its wall time is mostly its own waiting. That is reported (`cli_wall_ms`, with the CLI's
requests counted from its own debug log, TF_LOG_PATH), but the platform is held to what is
its own, measured on the server from the run's rows: plan = `POST /runs` (the run created)
→ `apply_pending` committed; apply = `actions/apply` (Confirm) → `applied` committed. Like
with like: the platform's warm plan (its agent's warm plan dir, no init: `Job.plan_start`)
against the bare `plan` in an initialised dir, a cold one against `init` + `plan`.
`yes_to_apply_start_ms`: `yes` written to the pty → `terraform apply` started on the agent
(`Task.apply_started_at`; one machine, one clock).

Prints a table, writes bench/results/cli_apply.json and a plot, and ends with
`cli_wall_ms=… bare_wall_ms=… plan_overhead_ms=… apply_overhead_ms=… yes_to_apply_start_ms=…`
(plan overhead: the warm plans' when there are any, else the cold ones').
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agents_app.agent.terraform import resolve_terraform
from bench.api import Api
from bench.dispatch import MAIN_TF
from bench.live import RESULTS, BenchPlatform, PlatformRun, bench_admin, bench_platform, say, write_results
from bench.report import percentile

# The platform's models are imported inside functions: only after django.setup().

DB_NAME = "iac_bench_cli"
WORKSPACE = "bench-cli"
# A line of Daphne's access log (the server's log of the CLI's requests; go-tfe logs none).
REQUEST_LINE = re.compile(r'"(GET|POST|PUT|PATCH|HEAD) (/api/v2/\S*)"')


def ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else (b - a) * 1000


class CliApply:
    def __init__(self, args: argparse.Namespace, live: BenchPlatform, api: Api, token: str, terraform: str) -> None:
        self.args = args
        self.live = live
        self.api = api
        self.token = token
        self.terraform = terraform
        self.rows: list[dict[str, Any]] = []
        self.marker = live.dir / "applied.txt"
        self.workspace_id = 0
        self.bare_workspace_id = 0

    def setup(self) -> None:
        from agents_app.services.agents import pool_create
        from tasks_app.models import Workspace
        from tasks_app.tfe.cli_config import cli_config, cloud_block

        pool, pool_token = pool_create(name="bench-cli", warm_apply=True, backend="static")
        self.live.start_agent(pool_token, "cli-1", env={"IAC_TERRAFORM_BIN": self.terraform})
        ws = self.api.create_workspace(WORKSPACE, pool.id, {"main.tf": MAIN_TF}, {"marker_file": str(self.marker)})
        bare = self.api.create_workspace(f"{WORKSPACE}-bare", pool.id, {"main.tf": MAIN_TF}, {})
        self.workspace_id, self.bare_workspace_id = ws["id"], bare["id"]
        assert Workspace.objects.filter(id=self.workspace_id).exists()

        self.cloud_dir = self.live.dir / "cloud"
        shutil.rmtree(self.cloud_dir, ignore_errors=True)
        self.cloud_dir.mkdir(parents=True)
        (self.cloud_dir / "main.tf").write_text(
            cloud_block(self.live.base_url, "iac", WORKSPACE) + MAIN_TF)
        self.tfrc = self.live.dir / "terraform.tfrc"
        self.tfrc.write_text(cli_config(self.live.base_url, self.token))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "IAC_"))}
        self.env.update(TF_CLI_CONFIG_FILE=str(self.tfrc), CHECKPOINT_DISABLE="1", TERM="dumb")
        init = subprocess.run([self.terraform, "init", "-no-color"], cwd=self.cloud_dir, env=self.env,
                              capture_output=True, text=True, timeout=300)
        if init.returncode != 0:
            raise RuntimeError(f"terraform init (cloud) failed: {init.stdout[-2000:]}{init.stderr[-2000:]}")

        self.bare_dir = self.live.dir / "bare"
        shutil.rmtree(self.bare_dir, ignore_errors=True)

    # --- the two ways -------------------------------------------------------------------------

    def cloud(self) -> dict[str, Any]:
        from tasks_app.dispatch.models import Job
        from tasks_app.models import Task, TaskEvent
        from tests.tfe.terminal import Terminal

        access_log = self.live.log_dir / "daphne.log"
        log_start = access_log.stat().st_size if access_log.exists() else 0
        env = self.env
        before = set(Task.objects.filter(workspace_id=self.workspace_id).values_list("id", flat=True))
        t0 = time.time()
        term = Terminal([self.terraform, "apply", "-no-color"], cwd=self.cloud_dir, env=env)
        term.expect(r"Enter a value:", timeout=self.args.timeout)
        prompt = time.time()
        term.send("yes\n")
        yes = time.time()
        term.expect(r"Apply complete!", timeout=self.args.timeout)
        code = term.wait(timeout=self.args.timeout)
        t1 = time.time()
        if code != 0:
            raise RuntimeError(f"terraform apply (cloud) exited {code}:\n{term.output[-3000:]}")
        [task_id] = set(Task.objects.filter(workspace_id=self.workspace_id).values_list("id", flat=True)) - before
        task = Task.objects.get(id=task_id)
        events = {e.to_status: e.created_at.timestamp() for e in TaskEvent.objects.filter(task=task)}
        plan_job = Job.objects.filter(task=task, kind="plan").order_by("-id").first()
        requests = self.requests(access_log, log_start)
        return {
            "way": "cloud", "run": task.id, "apply_path": task.apply_path,
            "plan_start": plan_job.plan_start if plan_job else "",
            "wall_ms": (t1 - t0) * 1000,
            "to_prompt_ms": (prompt - t0) * 1000,
            "after_yes_ms": (t1 - yes) * 1000,
            "server_plan_ms": ms(task.created_at.timestamp(), events.get("apply_pending")),
            "server_apply_ms": ms(task.confirmed_at.timestamp() if task.confirmed_at else None, events.get("applied")),
            "yes_to_apply_start_ms": ms(yes, task.apply_started_at.timestamp() if task.apply_started_at else None),
            "cli_requests": len(requests),
            "cli_run_polls": sum(1 for method, path in requests if method == "GET" and re.search(r"/runs/run-\d+$", path)),
            "cli_log_reads": sum(1 for _, path in requests if "/logs/" in path),
        }

    @staticmethod
    def requests(access_log: Path, start: int) -> list[tuple[str, str]]:
        """(method, path) of each /api/v2/ request the server logged since `start` (its
        access log has one-second stamps: counts, not timings)."""
        with open(access_log, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode(errors="replace")
        return [(m.group(1), m.group(2)) for m in REQUEST_LINE.finditer(text)]

    def bare(self) -> dict[str, Any]:
        work = self.bare_dir / f"run-{len(self.rows)}"
        work.mkdir(parents=True)
        (work / "main.tf").write_text(MAIN_TF)
        (work / "backend.tf").write_text('terraform {\n  backend "http" {}\n}\n')
        state = f"{self.live.base_url}/api/v1/workspaces/{self.bare_workspace_id}/state"
        env = dict(self.env, TF_IN_AUTOMATION="1", TF_VAR_marker_file=str(self.marker.with_suffix(".bare.txt")),
                   TF_HTTP_ADDRESS=state, TF_HTTP_LOCK_ADDRESS=f"{state}/lock", TF_HTTP_UNLOCK_ADDRESS=f"{state}/lock",
                   TF_HTTP_USERNAME="bench", TF_HTTP_PASSWORD=self.token)
        took: dict[str, float] = {}

        def tf(name: str, *argv: str) -> None:
            started = time.monotonic()
            out = subprocess.run([self.terraform, *argv], cwd=work, env=env, capture_output=True, text=True,
                                 timeout=self.args.timeout)
            took[name] = (time.monotonic() - started) * 1000
            if out.returncode != 0:
                raise RuntimeError(f"terraform {' '.join(argv)} failed: {out.stderr[-2000:]}")

        tf("init", "init", "-input=false", "-no-color")
        tf("plan_cold", "plan", "-input=false", "-no-color", "-out=plan.out")
        tf("plan_warm", "plan", "-input=false", "-no-color", "-out=plan.out")  # an initialised dir
        tf("apply", "apply", "-input=false", "-no-color", "plan.out")
        return {"way": "bare", "wall_ms": took["init"] + took["plan_cold"] + took["apply"],
                "init_plan_ms": took["init"] + took["plan_cold"], "plan_warm_ms": took["plan_warm"],
                "apply_ms": took["apply"]}

    def measure(self) -> None:
        from django.db import close_old_connections

        total = self.args.warmup_runs + self.args.runs
        for i in range(total):
            for way in ("cloud", "bare"):
                close_old_connections()
                row = self.cloud() if way == "cloud" else self.bare()
                row.update(round=i, measured=i >= self.args.warmup_runs)
                self.rows.append(row)
                say(f"    [{i + 1}/{total}] {way:5} wall {row['wall_ms']:7.0f} ms"
                    + (f"  server plan {row['server_plan_ms']:5.0f} ms ({row['plan_start'] or '?'})  apply "
                       f"{row['server_apply_ms']:5.0f} ms  yes→apply start {row['yes_to_apply_start_ms']:4.0f} ms"
                       if way == "cloud" else "")
                    + ("" if row["measured"] else "  (warm-up, not counted)"))


def p50(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return percentile(values, 50) if values else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    measured = [r for r in rows if r.get("measured")]
    cloud = [r for r in measured if r["way"] == "cloud"]
    bare = [r for r in measured if r["way"] == "bare"]
    warm = [r for r in cloud if r.get("plan_start") == "warm"]
    cold = [r for r in cloud if r.get("plan_start") != "warm"]
    out = {
        "cli_wall_ms": p50(cloud, "wall_ms"), "bare_wall_ms": p50(bare, "wall_ms"),
        "cli_to_prompt_ms": p50(cloud, "to_prompt_ms"), "cli_after_yes_ms": p50(cloud, "after_yes_ms"),
        "cli_requests": p50(cloud, "cli_requests"), "cli_run_polls": p50(cloud, "cli_run_polls"),
        "cli_log_reads": p50(cloud, "cli_log_reads"),
        "server_plan_warm_ms": p50(warm, "server_plan_ms"), "server_plan_cold_ms": p50(cold, "server_plan_ms"),
        "warm_plans": len(warm), "cold_plans": len(cold),
        "bare_plan_warm_ms": p50(bare, "plan_warm_ms"), "bare_init_plan_ms": p50(bare, "init_plan_ms"),
        "server_apply_ms": p50(cloud, "server_apply_ms"), "bare_apply_ms": p50(bare, "apply_ms"),
        "yes_to_apply_start_ms": p50(cloud, "yes_to_apply_start_ms"),
        "fast_applies": sum(1 for r in cloud if r.get("apply_path") == "fast"), "applies": len(cloud),
    }

    def diff(a: str, b: str) -> float | None:
        return None if out[a] is None or out[b] is None else out[a] - out[b]

    out["plan_overhead_warm_ms"] = diff("server_plan_warm_ms", "bare_plan_warm_ms")
    out["plan_overhead_cold_ms"] = diff("server_plan_cold_ms", "bare_init_plan_ms")
    out["apply_overhead_ms"] = diff("server_apply_ms", "bare_apply_ms")
    return out


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} ms"


def markdown(s: dict[str, Any]) -> str:
    return "\n".join([
        "| what (p50) | cloud block | bare CLI, HTTP backend | overhead |",
        "|---|---|---|---|",
        f"| wall, `terraform apply` answered `yes` | {fmt(s['cli_wall_ms'])} | {fmt(s['bare_wall_ms'])} "
        f"(init + plan + apply) | |",
        f"| plan, warm ({s['warm_plans']} runs): server `POST /runs` → planned | {fmt(s['server_plan_warm_ms'])} | "
        f"{fmt(s['bare_plan_warm_ms'])} (plan, initialised dir) | {fmt(s['plan_overhead_warm_ms'])} |",
        f"| plan, cold ({s['cold_plans']} runs) | {fmt(s['server_plan_cold_ms'])} | {fmt(s['bare_init_plan_ms'])} "
        f"(init + plan) | {fmt(s['plan_overhead_cold_ms'])} |",
        f"| apply: server `actions/apply` → applied | {fmt(s['server_apply_ms'])} | {fmt(s['bare_apply_ms'])} "
        f"(apply plan.out) | {fmt(s['apply_overhead_ms'])} |",
        f"| `yes` → terraform apply started on the agent | {fmt(s['yes_to_apply_start_ms'])} | | |",
        "",
        "| the CLI's own time (p50; requests from the server's log) | |",
        "|---|---|",
        f"| start → prompt | {fmt(s['cli_to_prompt_ms'])} |",
        f"| `yes` → exit | {fmt(s['cli_after_yes_ms'])} |",
        f"| requests per apply / run polls / log reads | {s['cli_requests']:.0f} / {s['cli_run_polls']:.0f} / "
        f"{s['cli_log_reads']:.0f} |" if s["cli_requests"] is not None else "| requests | — |",
        f"| applies on the fast path | {s['fast_applies']} of {s['applies']} |",
    ])


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib  # heavy: loaded only to plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r.get("measured")]
    cloud = [r for r in measured if r["way"] == "cloud"]
    bare = [r for r in measured if r["way"] == "bare"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot([r["wall_ms"] for r in cloud], "o-", label="cloud: terraform apply wall")
    ax.plot([r["wall_ms"] for r in bare], "s-", label="bare: init + plan + apply wall")
    ax.plot([r["server_plan_ms"] for r in cloud], "^-", label="cloud: server plan")
    ax.plot([r["server_apply_ms"] for r in cloud], "v-", label="cloud: server apply")
    ax.set_xlabel("round")
    ax.set_ylabel("ms")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cli_apply", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="measured rounds (default 15)")
    parser.add_argument("--warmup-runs", type=int, default=1, help="unmeasured rounds first (default 1)")
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args()
    live = bench_platform(db_name=DB_NAME, subdir="bench-cli", server_timings={})
    bench: CliApply | None = None
    started = time.monotonic()
    with PlatformRun(live) as run:
        live.setup_django()
        base = live.serve()
        token = bench_admin()[1]
        bench = CliApply(args, live, Api(base, token), token, resolve_terraform(live.var_dir))
        bench.setup()
        say(f"==> {args.warmup_runs}+{args.runs} rounds, cloud and bare interleaved")
        bench.measure()
    if run.failure is not None:
        return run.exit_code()
    assert bench is not None
    summary = summarize(bench.rows)
    write_results("cli_apply", {
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "runs": args.runs, "cpus": os.cpu_count(),
        "loadavg_end": os.getloadavg(), "wall_s": round(time.monotonic() - started, 1),
        "summary": summary, "rows": bench.rows,
    })
    plot(bench.rows, RESULTS / "cli_apply.png")
    say("")
    say(markdown(summary))
    say(f"\nplot: {RESULTS / 'cli_apply.png'}")
    plan_over = (summary["plan_overhead_warm_ms"] if summary["plan_overhead_warm_ms"] is not None
                 else summary["plan_overhead_cold_ms"])

    def n(v: float | None) -> str:
        return "nan" if v is None else f"{v:.0f}"

    say(f"cli_wall_ms={n(summary['cli_wall_ms'])} bare_wall_ms={n(summary['bare_wall_ms'])} "
        f"plan_overhead_ms={n(plan_over)} apply_overhead_ms={n(summary['apply_overhead_ms'])} "
        f"yes_to_apply_start_ms={n(summary['yes_to_apply_start_ms'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
