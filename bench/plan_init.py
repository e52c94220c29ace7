"""The plan phase cold, with the provider cache, and warm (no init), side by side; and three
concurrent inits of one provider on one agent, round after round.

    python -m bench.plan_init [--runs 7] [--rounds 20]        # make bench-plan-init

Brings up its own platform (fresh database `iac_bench_plan_init`, its own Redis, Daphne, a
Celery worker with beat) and a real provider (the `workato-terraform-provider` wheel, about
25 MB) in a PACKED filesystem mirror (the registry's zips) built once in the bench's dir, so
a cold `init` does real work: unpack and checksum. (From an unpacked mirror `init` is only a
symlink, about 45 ms, and proves nothing.) The workspace's configuration commits its lock
file (h1: and zh: hashes), as real projects do.

Three agents, each alone in a pool of its own, one workspace each, plan-only runs
interleaved:
- cold:   no provider cache, no warm plan dirs: every plan runs `init` from the packed mirror;
- cached: the provider cache (IAC_AGENT_PROVIDER_UPSTREAM = the packed mirror), warm plan
          dirs off: `init` links the provider from the cache;
- warm:   the cache and warm plan dirs: after the first plan, plans run without `init`.

Plan phase = run created → `planned` committed (the server's rows). A terraform wrapper
records each terraform process (start, end, subcommand, dir): `cold_init_ms` is the cold
agent's median `init`, `warm_inits` the number of `init`s the warm agent ran in measured runs.

Concurrency: each round starts a fresh agent (3 slots, an empty provider cache) after three
plans of three workspaces are queued, so its three slots initialise the same provider at
once; counted: failed plans, installs per round (the agent's log), and corrupted cache
entries (h1 recomputed against the lock file).

Prints a table, saves bench/results/plan_init.{json,png}, and ends with
`cold_plan_ms=… cached_plan_ms=… warm_plan_ms=… concurrent_init_failures=… cold_init_ms=… warm_inits=…`.
Targets: warm_inits=0, warm ≤ cold − 0.8 × cold_init, 0 failures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agents_app.agent.terraform import resolve_terraform
from bench.api import Api
from bench.dispatch import TF_WRAPPER  # one line per terraform process: start end rc subcommand dir
from bench.live import RESULTS, BenchPlatform, PlatformRun, bench_admin, bench_platform, say, write_results
from bench.report import percentile
from bench.terraform_fixture import MAIN_TF, PROVIDER_REL, ensure_packed_mirror

# The platform's models and services are imported inside functions: only after django.setup().

DB_NAME = "iac_bench_plan_init"
MODES = ("cold", "cached", "warm")


class PlanInit:
    def __init__(self, args: argparse.Namespace, live: BenchPlatform, api: Api, tf_real: str, mirror: Path,
                 lock: str) -> None:
        self.args = args
        self.live = live
        self.api = api
        self.tf_real = tf_real
        self.mirror = mirror
        self.lock = lock
        self.tools = live.dir / "terraform"
        self.times = self.tools / "times.log"
        self.markers = live.dir / "markers"
        self.rows: list[dict[str, Any]] = []
        self.rounds: list[dict[str, Any]] = []
        self.workspaces: dict[str, int] = {}

    def files(self) -> dict[str, str]:
        return {"main.tf": MAIN_TF, ".terraform.lock.hcl": self.lock}

    def agent_env(self, mode: str) -> dict[str, str]:
        self.tools.mkdir(parents=True, exist_ok=True)
        wrapper = self.tools / "terraform"
        wrapper.write_text(TF_WRAPPER.format(real=self.tf_real, times=self.times))
        wrapper.chmod(0o755)
        env = {"IAC_TERRAFORM_BIN": str(wrapper)}
        if mode == "cold":
            cli = self.tools / "packed-mirror.tfrc"
            cli.write_text(f'provider_installation {{\n  filesystem_mirror {{\n    path = "{self.mirror}"\n  }}\n}}\n')
            env.update(TF_CLI_CONFIG_FILE=str(cli), IAC_AGENT_WARM_PLAN_DIRS="0")
        else:
            env.update(IAC_AGENT_PROVIDER_UPSTREAM=str(self.mirror))
            env["IAC_AGENT_WARM_PLAN_DIRS"] = "0" if mode == "cached" else "20"
        return env

    def pool(self, name: str) -> tuple[int, str]:
        from agents_app.services.agents import pool_create

        pool, token = pool_create(name=name, warm_apply=False, backend="static")
        return pool.id, token

    def setup(self) -> None:
        # Nothing of an earlier run: agents' work roots (caches, warm plan dirs) and timings.
        shutil.rmtree(self.live.dir / "agents", ignore_errors=True)
        self.times.unlink(missing_ok=True)
        self.markers.mkdir(parents=True, exist_ok=True)
        for mode in MODES:
            pool_id, token = self.pool(f"plan-init-{mode}")
            self.live.start_agent(token, f"plan-init-{mode}", env=self.agent_env(mode))
            ws = self.api.create_workspace(f"plan-init-{mode}", pool_id, self.files(),
                                           {"marker_file": str(self.markers / f"{mode}.txt")})
            self.workspaces[mode] = ws["id"]

    # --- the plan phase -------------------------------------------------------------------------

    def queue_plan(self, workspace_id: int) -> int:
        return self.api.request("POST", f"/api/v1/workspaces/{workspace_id}/runs/", json={"operation": "plan"},
                                expect=201).json()["id"]

    def plan(self, mode: str) -> dict[str, Any]:
        from tasks_app.dispatch.models import Job
        from tasks_app.models import Task, TaskEvent

        ws = self.workspaces[mode]
        rid = self.queue_plan(ws)
        run = self.api.wait(rid, "planned", timeout=self.args.timeout)
        task = Task.objects.get(id=rid)
        planned = TaskEvent.objects.filter(task=task, to_status="planned").order_by("id").first()
        job = Job.objects.filter(task=task, kind="plan").order_by("-id").first()
        tf = self.terraform_times(ws, rid)
        init = tf.get("init")
        return {
            "mode": mode, "run": rid, "plan_ms": (planned.created_at - task.created_at).total_seconds() * 1000,
            "init_ms": (init[1] - init[0]) * 1000 if init else None, "inits": int(init is not None),
            "plan_start": run.get("plan_start"), "plan_start_reason": run.get("plan_start_reason"),
            "agent": job.agent.name if job and job.agent else None,
        }

    def terraform_times(self, ws: int, rid: int) -> dict[str, tuple[float, float]]:
        found: dict[str, tuple[float, float]] = {}
        suffix = f"/{ws}/{rid}"
        if not self.times.exists():
            return found
        for line in self.times.read_text().splitlines():
            parts = line.split(" ", 4)
            if len(parts) == 5 and parts[4].endswith(suffix):
                found[parts[3]] = (float(parts[0]), float(parts[1]))
        return found

    def measure(self) -> None:
        from django.db import close_old_connections

        total = (self.args.warmup_runs + self.args.runs) * len(MODES)
        for i in range(self.args.warmup_runs + self.args.runs):
            for mode in MODES:
                close_old_connections()
                row = self.plan(mode)
                row["measured"] = i >= self.args.warmup_runs
                self.rows.append(row)
                init = f"init {row['init_ms']:5.0f} ms" if row["init_ms"] is not None else "no init      "
                say(f"    [{len(self.rows)}/{total}] {mode:6} plan {row['plan_ms']:6.0f} ms  {init}  "
                    f"{row['plan_start']}" + ("" if row["measured"] else "  (warm-up, not counted)"))

    # --- three concurrent inits -----------------------------------------------------------------

    def concurrent(self) -> None:
        from django.db import close_old_connections

        from agents_app.agent.providers import h1_dir, parse_lock_file

        close_old_connections()
        pool_id, token = self.pool("plan-init-concurrent")
        workspaces = [self.api.create_workspace(f"plan-init-concurrent-{n}", pool_id, self.files(),
                                                {"marker_file": str(self.markers / "concurrent.txt")})["id"]
                      for n in range(3)]
        locked = parse_lock_file(self.lock)[0]
        for r in range(self.args.rounds):
            close_old_connections()
            runs = [self.queue_plan(ws) for ws in workspaces]
            name = f"plan-init-round-{r}"
            (self.live.log_dir / f"agent-{name}.log").unlink(missing_ok=True)
            self.live.start_agent(token, name, env=self.agent_env("cached"), slots=3)
            failures = 0
            for rid in runs:
                try:
                    self.api.wait(rid, "planned", timeout=self.args.timeout)
                except AssertionError as exc:
                    failures += 1
                    say(f"      round {r}: run {rid} failed: {str(exc)[:300]}")
            self.live.agents[name].stop(timeout=10)
            log = self.live.agents[name].log_path.read_text(errors="replace")
            installs = log.count("provider cache: installed")
            entry = self.live.dir / "agents" / name / ".providers" / PROVIDER_REL
            corrupted = int(not entry.is_dir() or h1_dir(entry) not in locked.hashes)
            self.rounds.append({"round": r, "failures": failures, "installs": installs, "corrupted": corrupted})
            say(f"    round {r + 1:2}/{self.args.rounds}: {3 - failures}/3 plans ok, {installs} install(s), "
                f"{corrupted} corrupted cache entr{'y' if corrupted == 1 else 'ies'}")


# --- report -------------------------------------------------------------------------------------


def summarize(rows: list[dict[str, Any]], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    measured = [r for r in rows if r.get("measured")]
    out: dict[str, Any] = {"modes": {}}
    for mode in MODES:
        sel = [r for r in measured if r["mode"] == mode]
        plan = [r["plan_ms"] for r in sel]
        init = [r["init_ms"] for r in sel if r["init_ms"] is not None]
        out["modes"][mode] = {
            "plan_p50": percentile(plan, 50), "plan_p90": percentile(plan, 90),
            "init_p50": percentile(init, 50) if init else None, "inits": sum(r["inits"] for r in sel), "n": len(sel),
        }
    out["concurrent"] = {
        "rounds": len(rounds), "failures": sum(r["failures"] for r in rounds),
        "installs": [r["installs"] for r in rounds], "corrupted": sum(r["corrupted"] for r in rounds),
    }
    return out


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| mode | plan phase p50 | p90 | init p50 | inits (measured runs) |", "|---|---|---|---|---|"]
    for mode, s in summary["modes"].items():
        init = f"{s['init_p50']:.0f} ms" if s["init_p50"] is not None else "none"
        lines.append(f"| {mode} | {s['plan_p50']:.0f} ms | {s['plan_p90']:.0f} ms | {init} | {s['inits']}/{s['n']} |")
    c = summary["concurrent"]
    lines += ["", f"3 concurrent inits × {c['rounds']} rounds: {c['failures']} failed plans, installs per round "
                  f"{sorted(set(c['installs']))}, {c['corrupted']} corrupted cache entries"]
    return "\n".join(lines)


def plot(summary: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib  # heavy: loaded only to plot, and Agg chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    colors = ("#c44e52", "#dd8452", "#55a868")
    for k, mode in enumerate(MODES):
        s = summary["modes"][mode]
        ax.bar(k, s["plan_p50"], color=colors[k])
        if s["init_p50"] is not None:
            ax.bar(k, s["init_p50"], color="black", alpha=0.25, label="of which init" if k == 0 else None)
    ax.set_xticks(range(len(MODES)), MODES)
    ax.set_ylabel("median ms")
    ax.set_title("plan phase (run created → planned)")
    ax.legend()
    ax = axes[1]
    for k, mode in enumerate(MODES):
        values = [r["plan_ms"] for r in rows if r.get("measured") and r["mode"] == mode]
        ax.plot(range(1, len(values) + 1), values, "o-", color=colors[k], label=mode)
    ax.set_xlabel("measured run")
    ax.set_ylabel("ms")
    ax.set_title("each plan")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plan_init", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="measured plans per mode (default 7)")
    parser.add_argument("--warmup-runs", type=int, default=1, help="unmeasured plans per mode first (default 1)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds of three concurrent inits (default 20)")
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args()
    live = bench_platform(db_name=DB_NAME, subdir="bench-plan-init")
    bench: PlanInit | None = None
    started = time.monotonic()
    with PlatformRun(live) as run:
        live.setup_django()
        say("==> building the packed provider mirror (once)")
        mirror, lock = ensure_packed_mirror(live.dir / "packed-mirror")
        base = live.serve()
        api = Api(base, bench_admin()[1])
        bench = PlanInit(args, live, api, resolve_terraform(live.var_dir), mirror, lock)
        bench.setup()
        say(f"==> {args.warmup_runs}+{args.runs} plans per mode ({', '.join(MODES)}), interleaved")
        bench.measure()
        say(f"==> 3 concurrent inits of one provider on a fresh agent, {args.rounds} rounds")
        bench.concurrent()
    if run.failure is not None:
        return run.exit_code()
    assert bench is not None
    summary = summarize(bench.rows, bench.rounds)
    write_results("plan_init", {
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "runs": args.runs, "rounds": args.rounds,
        "cpus": os.cpu_count(), "loadavg_end": os.getloadavg(), "wall_s": round(time.monotonic() - started, 1),
        "summary": summary, "rows": bench.rows, "concurrent_rounds": bench.rounds,
    })
    plot(summary, bench.rows, RESULTS / "plan_init.png")
    say("")
    say(markdown(summary))
    say(f"\nplot: {RESULTS / 'plan_init.png'}")
    m, c = summary["modes"], summary["concurrent"]
    cold, cached, warm = m["cold"]["plan_p50"], m["cached"]["plan_p50"], m["warm"]["plan_p50"]
    cold_init = m["cold"]["init_p50"] or 0.0
    failures = c["failures"] + c["corrupted"] + sum(1 for n in c["installs"] if n != 1)
    met = m["warm"]["inits"] == 0 and warm <= cold - 0.8 * cold_init and failures == 0
    say(f"targets {'met' if met else 'NOT met'}: warm_inits=0, warm ≤ cold − 0.8 × cold_init "
        f"({warm:.0f} ≤ {cold - 0.8 * cold_init:.0f}), 0 failures (failed plans + corrupted entries + rounds "
        "without exactly one install)")
    say(f"cold_plan_ms={cold:.0f} cached_plan_ms={cached:.0f} warm_plan_ms={warm:.0f} "
        f"concurrent_init_failures={failures} cold_init_ms={cold_init:.0f} warm_inits={m['warm']['inits']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
