"""The platform's overhead over bare terraform: a whole plan and a whole apply, each against
terraform doing the same work on the same state backend.

    python -m bench.overhead [--runs 15]       # make bench-overhead

Brings up its own platform (fresh database `iac_bench_overhead`, its own Redis, Daphne, a
Celery worker with beat, one agent with 3 slots on a warm pool) and runs the same
configurations three ways, interleaved:

- platform:   a `plan_and_apply` run through the API, confirmed the moment it waits;
- bare-http:  the terraform CLI in a plain dir: `init` + `plan -out` + `show -json`, then
              `apply plan.out`, against the platform's own HTTP state backend (user token);
- bare-local: the same with local state.

Two configurations: `data` (one `terraform_data`, no provider) and `provider` (the same plus
a real provider installed from a filesystem mirror). Every plan has a change (timestamp()).

Platform phases come from the server's rows and the terraform commands each job reports
with its result, as its agent timed them (`Job.commands`: start to exit, the sandbox's start
included; same machine, same clock): plan = run created → `apply_pending` committed; apply =
Confirm → `applied` committed. The per-hop breakdown splits them: queued → claimed, claimed
→ init start (config fetched and unpacked), init, init → plan, plan, show, show end → plan
uploaded, uploaded → finish reported, finish → status committed; Confirm → apply start,
terraform apply, apply end → finish reported, finish → committed. (No wrapper around
terraform: a shell script timing each process added its own ~3 ms per process to the
platform's side only.)

Prints a table (median and p90 per phase and way; the overhead as the difference of the
medians, and paired: the median of each round's platform-minus-bare difference, which the
shared machine's drifting load moves less), the breakdown, saves
bench/results/overhead.{json,png}, and ends with
`plan_overhead_ms=… apply_overhead_ms=… backend_cost_ms=… confirm_to_apply_start_ms=…`
(overhead: platform against bare-http, the one-resource `data` configuration; backend cost:
bare-http against bare-local, per phase, averaged over plan and apply).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agents_app.agent.terraform import resolve_terraform
from bench.api import Api
from bench.dispatch import MAIN_TF as DATA_TF  # one terraform_data, a change in every plan
from bench.live import RESULTS, BenchPlatform, PlatformRun, bench_admin, bench_platform, say, write_results
from bench.report import percentile
from bench.terraform_fixture import MAIN_TF as PROVIDER_TF
from bench.terraform_fixture import ensure_mirror, write_cli_config

# The platform's models and services are imported inside functions: only after django.setup().

DB_NAME = "iac_bench_overhead"

CONFIGS = {"data": DATA_TF, "provider": PROVIDER_TF}
COMMANDS = ("init", "plan", "show", "apply")  # terraform's, timed in both ways
WAYS = ("platform", "bare-http", "bare-local")

PLAN_HOPS = (
    ("queued_to_claimed", "queued → claimed"),
    ("claimed_to_init", "claimed → init start (config, answer)"),
    ("claimed_to_plan_warm", "claimed → plan start, warm plan dir (no init)"),
    ("init", "terraform init (sandbox start included)"),
    ("init_to_plan", "init end → plan start"),
    ("plan", "terraform plan (sandbox start included)"),
    ("plan_to_show", "plan end → show start"),
    ("show", "terraform show -json (sandbox start included)"),
    ("show_to_uploaded", "show end → plan stored"),
    ("uploaded_to_finished", "plan stored → finish reported"),
    ("finished_to_committed", "finish → apply_pending committed"),
)
APPLY_HOPS = (
    ("confirm_to_apply_start", "confirm → apply start"),
    ("apply", "terraform apply (sandbox start included)"),
    ("apply_to_finished", "apply end → finish reported"),
    ("finished_to_applied", "finish → applied committed"),
)


def ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else (b - a) * 1000


def epoch(dt: datetime | None) -> float | None:
    return dt.timestamp() if dt is not None else None


class Overhead:
    def __init__(self, args: argparse.Namespace, live: BenchPlatform, api: Api, token: str,
                 tf_real: str, cli_config: Path) -> None:
        self.args = args
        self.live = live
        self.api = api
        self.token = token
        self.tf_real = tf_real
        self.cli_config = cli_config
        self.markers = live.dir / "markers"
        self.bare = live.dir / "bare"
        self.rows: list[dict[str, Any]] = []
        self.workspaces: dict[str, dict[str, int]] = {}

    # --- setup --------------------------------------------------------------------------------

    def agent_env(self) -> dict[str, str]:
        return {"IAC_TERRAFORM_BIN": self.tf_real, "TF_CLI_CONFIG_FILE": str(self.cli_config)}

    def setup(self) -> None:
        from agents_app.services.agents import pool_create

        pool, pool_token = pool_create(name="bench-overhead", warm_apply=True, backend="static")
        self.live.start_agent(pool_token, "overhead-1", env=self.agent_env())
        self.markers.mkdir(parents=True, exist_ok=True)
        for name, tf in CONFIGS.items():
            marker = str(self.markers / f"{name}.txt")
            platform_ws = self.api.create_workspace(f"overhead-{name}", pool.id, {"main.tf": tf}, {"marker_file": marker})
            # The bare CLI gets a workspace of its own: its state, on the same backend.
            bare_ws = self.api.create_workspace(f"overhead-{name}-bare", pool.id, {"main.tf": tf}, {"marker_file": marker})
            self.workspaces[name] = {"platform": platform_ws["id"], "bare": bare_ws["id"]}

    # --- the three ways -------------------------------------------------------------------------

    def platform(self, config: str) -> dict[str, Any]:
        from tasks_app.dispatch.models import Job
        from tasks_app.models import Plan, Task, TaskEvent

        ws = self.workspaces[config]["platform"]
        run = self.api.queue(ws)
        rid = run["id"]
        # Through the run's long-poll, as a client would wait: polling every 100 ms put a
        # request on the server every 100 ms while the measured terraform used it as its state backend.
        # (--wait poll: the old way, to compare.)
        wait = self.api.wait if self.args.wait == "poll" else self.api.wait_longpoll
        wait(rid, "apply_pending", timeout=self.args.timeout, until=lambda r: r["warmup_status"] == "ready")
        self.api.request("POST", f"/api/v1/runs/{rid}/confirm/", json={}, expect=200)
        done = wait(rid, "applied", timeout=self.args.timeout)
        task = Task.objects.get(id=rid)
        events = {e.to_status: epoch(e.created_at) for e in TaskEvent.objects.filter(task=task)}
        plan_job = Job.objects.filter(task=task, kind="plan").order_by("-id").first()
        apply_job = Job.objects.get(task=task, kind="apply")
        plan = Plan.objects.filter(task=task).only("created_at").first()
        tf = {**self.terraform_times(plan_job), **self.terraform_times(apply_job)}
        created, pending = epoch(task.created_at), events.get("apply_pending")
        confirmed, applied = epoch(task.confirmed_at), events.get("applied")
        init, plan_tf, show, apply_tf = tf.get("init"), tf.get("plan"), tf.get("show"), tf.get("apply")
        row = {
            "way": "platform", "config": config, "run": rid, "apply_path": done["apply_path"],
            "plan_ms": ms(created, pending), "apply_ms": ms(confirmed, applied),
            "queued_to_claimed": ms(created, epoch(plan_job.claimed_at)),
            "claimed_to_init": ms(epoch(plan_job.claimed_at), init and init[0]),
            "claimed_to_plan_warm": None if init else ms(epoch(plan_job.claimed_at), plan_tf and plan_tf[0]),
            "init": ms(*(init or (None, None))),
            "init_to_plan": ms(init and init[1], plan_tf and plan_tf[0]),
            "plan": ms(*(plan_tf or (None, None))),
            "plan_to_show": ms(plan_tf and plan_tf[1], show and show[0]),
            "show": ms(*(show or (None, None))),
            "show_to_uploaded": ms(show and show[1], epoch(plan.created_at) if plan else None),
            "uploaded_to_finished": ms(epoch(plan.created_at) if plan else None, epoch(plan_job.finished_at)),
            "finished_to_committed": ms(epoch(plan_job.finished_at), pending),
            "confirm_to_apply_start": ms(confirmed, epoch(task.apply_started_at)),
            "apply": ms(*(apply_tf or (None, None))),
            "apply_to_finished": ms(apply_tf and apply_tf[1], epoch(apply_job.finished_at)),
            "finished_to_applied": ms(epoch(apply_job.finished_at), applied),
        }
        return row

    @staticmethod
    def terraform_times(job: Any) -> dict[str, tuple[float, float]]:
        """(start, end) of each terraform command the job ran, as its agent reported them."""
        return {c["command"]: (c["started_at"], c["ended_at"]) for c in (job.commands if job else [])}

    def bare_cli(self, config: str, backend: str) -> dict[str, Any]:
        """init + plan -out + show -json, then apply plan.out, in a fresh dir each time (the
        platform plans in a fresh dir each time too)."""
        work = self.bare / f"{config}-{backend}-{len(self.rows)}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        (work / "main.tf").write_text(CONFIGS[config])
        env = dict(os.environ, TF_CLI_CONFIG_FILE=str(self.cli_config), TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1",
                   TF_VAR_marker_file=str(self.markers / f"{config}-bare.txt"))
        if backend == "http":
            (work / "backend.tf").write_text('terraform {\n  backend "http" {}\n}\n')
            state = f"{self.live.base_url}/api/v1/workspaces/{self.workspaces[config]['bare']}/state"
            env.update(TF_HTTP_ADDRESS=state, TF_HTTP_LOCK_ADDRESS=f"{state}/lock", TF_HTTP_UNLOCK_ADDRESS=f"{state}/lock",
                       TF_HTTP_USERNAME="bench", TF_HTTP_PASSWORD=self.token)

        took: dict[str, float] = {}

        def tf(*argv: str) -> None:
            started = time.monotonic()
            out = subprocess.run([self.tf_real, *argv], cwd=work, env=env, capture_output=True, text=True, timeout=300)
            took[f"tf_{argv[0]}"] = (time.monotonic() - started) * 1000
            if out.returncode != 0:
                raise RuntimeError(f"terraform {' '.join(argv)} failed: {out.stderr[-2000:]}")

        t0 = time.monotonic()
        tf("init", "-input=false", "-no-color")
        tf("plan", "-input=false", "-no-color", "-out=plan.out")
        tf("show", "-json", "plan.out")
        t1 = time.monotonic()
        tf("apply", "-input=false", "-no-color", "plan.out")
        t2 = time.monotonic()
        return {"way": f"bare-{backend}", "config": config, "plan_ms": (t1 - t0) * 1000, "apply_ms": (t2 - t1) * 1000,
                **took}

    def once(self, config: str, way: str) -> dict[str, Any]:
        if way == "platform":
            return self.platform(config)
        return self.bare_cli(config, way.split("-", 1)[1])

    def measure(self) -> None:
        from django.db import close_old_connections

        total = (self.args.warmup_runs + self.args.runs) * len(CONFIGS) * len(WAYS)
        done = 0
        for i in range(self.args.warmup_runs + self.args.runs):
            for config in CONFIGS:
                for way in WAYS:
                    close_old_connections()
                    row = self.once(config, way)
                    done += 1
                    row["measured"] = i >= self.args.warmup_runs
                    row["round"] = i  # the three ways of a configuration ran back to back in it
                    self.rows.append(row)
                    say(f"    [{done}/{total}] {config:8} {way:10} plan {row['plan_ms']:7.0f} ms  apply {row['apply_ms']:7.0f} ms"
                        + ("" if row["measured"] else "  (warm-up, not counted)"))


# --- report -------------------------------------------------------------------------------------


def stats(rows: list[dict[str, Any]], key: str) -> tuple[float, float, int]:
    values = [r[key] for r in rows if r.get(key) is not None]
    return percentile(values, 50), percentile(values, 90), len(values)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    measured = [r for r in rows if r.get("measured")]
    out: dict[str, Any] = {}
    for config in CONFIGS:
        out[config] = {}
        for way in WAYS:
            sel = [r for r in measured if r["config"] == config and r["way"] == way]
            out[config][way] = {k: stats(sel, k) for k in ("plan_ms", "apply_ms")}
        sel = [r for r in measured if r["config"] == config and r["way"] == "platform"]
        out[config]["hops"] = {k: stats(sel, k) for k, _ in PLAN_HOPS + APPLY_HOPS}
        bare = [r for r in measured if r["config"] == config and r["way"] == "bare-http"]
        out[config]["bare_commands"] = {k: stats(bare, f"tf_{k}") for k in COMMANDS}
        out[config]["paired"] = {k: stats(paired(sel, bare, k), "difference") for k in ("plan_ms", "apply_ms")}
    return out


def paired(platform: list[dict[str, Any]], bare: list[dict[str, Any]], key: str) -> list[dict[str, float]]:
    """Each round's platform run minus the bare CLI run beside it (same round, same
    configuration): the machine's load drifts between rounds on a shared host, and a
    difference taken within a round is far less moved by it than a difference of medians."""
    by_round = {r["round"]: r[key] for r in bare if r.get(key) is not None}
    return [{"difference": r[key] - by_round[r["round"]]} for r in platform
            if r.get(key) is not None and r["round"] in by_round]


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| config | phase | platform (p50 / p90) | bare CLI, HTTP backend | bare CLI, local state | overhead (p50) "
             "| overhead, paired (p50) |",
             "|---|---|---|---|---|---|---|"]
    for config, s in summary.items():
        for phase in ("plan_ms", "apply_ms"):
            p, h, loc = s["platform"][phase], s["bare-http"][phase], s["bare-local"][phase]
            lines.append(f"| {config} | {phase[:-3]} | {p[0]:.0f} / {p[1]:.0f} ms | {h[0]:.0f} / {h[1]:.0f} ms | "
                         f"{loc[0]:.0f} / {loc[1]:.0f} ms | {p[0] - h[0]:+.0f} ms | {s['paired'][phase][0]:+.0f} ms |")
    lines += ["", "| hop (platform, `data`) | p50 | p90 | runs |", "|---|---|---|---|"]
    for key, label in PLAN_HOPS + APPLY_HOPS:
        p50, p90, n = summary["data"]["hops"][key]
        # A warm plan (the workspace's warm plan dir on its agent) runs no init: its hops are
        # "claimed → plan start, warm", a cold one's "claimed → init start", "init", ...
        lines.append(f"| {label} | {p50:.0f} ms | {p90:.0f} ms | {n} |" if n else f"| {label} | — | — | 0 |")
    # Each terraform command: in the platform (as its agent timed it, sandbox start
    # included) against the bare CLI's same command on the same backend.
    lines += ["", "| terraform command (`data`, p50) | platform, sandboxed | bare CLI, HTTP backend | difference |",
              "|---|---|---|---|"]
    for command in COMMANDS:
        platform_p50, _, n = summary["data"]["hops"][command]
        bare_p50 = summary["data"]["bare_commands"][command][0]
        if n:
            lines.append(f"| {command} | {platform_p50:.0f} ms | {bare_p50:.0f} ms | {platform_p50 - bare_p50:+.0f} ms |")
        else:
            lines.append(f"| {command} | — (a warm plan runs no init) | {bare_p50:.0f} ms | |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib  # heavy: loaded only to plot, and Agg chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    ax = axes[0]
    labels, width = [], 0.25
    for i, (config, s) in enumerate(summary.items()):
        for j, phase in enumerate(("plan_ms", "apply_ms")):
            x = i * 2 + j
            labels.append(f"{config}\n{phase[:-3]}")
            for k, way in enumerate(WAYS):
                ax.bar(x + (k - 1) * width, s[way][phase][0], width, label=way if x == 0 else None,
                       color=("#4c72b0", "#dd8452", "#55a868")[k])
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("median ms")
    ax.set_title("whole plan / whole apply")
    ax.legend()
    ax = axes[1]
    hops = PLAN_HOPS + APPLY_HOPS
    values = [summary["data"]["hops"][k][0] if summary["data"]["hops"][k][2] else 0 for k, _ in hops]
    ax.barh([label for _, label in hops], values, color="#4c72b0")
    ax.invert_yaxis()
    ax.set_xlabel("median ms")
    ax.set_title("platform, per hop (data config)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="measured runs per configuration and way (default 15)")
    parser.add_argument("--warmup-runs", type=int, default=1, help="unmeasured runs first (default 1)")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--wait", choices=("longpoll", "poll"), default="longpoll",
                        help="how the bench waits for a run: the run's long-poll (default) or polling every 100 ms")
    args = parser.parse_args()
    # The platform's own control-loop timings (heartbeat every 10 s, sweep every 5 s), as a
    # user runs it: this bench kills no agent, and a heartbeat and sweep every second put
    # extra work on the server and the database during the measured runs.
    live = bench_platform(db_name=DB_NAME, subdir="bench-overhead", server_timings={})
    bench: Overhead | None = None
    started = time.monotonic()
    with PlatformRun(live) as run:
        live.setup_django()
        mirror = ensure_mirror(live.dir / "provider-mirror")
        cli_config = write_cli_config(live.dir / "terraform.tfrc", mirror)
        base = live.serve()
        token = bench_admin()[1]
        api = Api(base, token)
        bench = Overhead(args, live, api, token, resolve_terraform(live.var_dir), cli_config)
        bench.setup()
        say(f"==> {args.warmup_runs}+{args.runs} runs per configuration ({', '.join(CONFIGS)}) and way "
            f"({', '.join(WAYS)}), interleaved")
        bench.measure()
    if run.failure is not None:
        return run.exit_code()
    assert bench is not None
    summary = summarize(bench.rows)
    write_results("overhead", {
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "runs": args.runs, "cpus": os.cpu_count(),
        "loadavg_end": os.getloadavg(), "wall_s": round(time.monotonic() - started, 1),
        "summary": summary, "rows": bench.rows,
    })
    plot(summary, RESULTS / "overhead.png")
    say("")
    say(markdown(summary))
    say(f"\nplot: {RESULTS / 'overhead.png'}")
    d = summary["data"]
    plan_over = d["platform"]["plan_ms"][0] - d["bare-http"]["plan_ms"][0]
    apply_over = d["platform"]["apply_ms"][0] - d["bare-http"]["apply_ms"][0]
    backend = ((d["bare-http"]["plan_ms"][0] - d["bare-local"]["plan_ms"][0])
               + (d["bare-http"]["apply_ms"][0] - d["bare-local"]["apply_ms"][0])) / 2
    say(f"plan_overhead_ms={plan_over:.0f} apply_overhead_ms={apply_over:.0f} backend_cost_ms={backend:.0f} "
        f"confirm_to_apply_start_ms={d['hops']['confirm_to_apply_start'][0]:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
