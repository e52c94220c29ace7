"""The autoscaler on a real platform with the `local` backend: a burst of runs against a pool
of min 1 / max 4 (3 slots per pod), then quiet.

    python -m bench.autoscale             # `make bench-autoscale`
    python -m bench.autoscale --runs 12

Daphne and a Celery worker with beat run on a database of their own; the worker's autoscaler
starts and stops real agent processes. The bench queues a burst of plan-and-apply runs (one
workspace each), confirms all but two once they wait for Confirm, and keeps those two
reserved while the pool scales back down; then confirms them.

Prints the time from queued to plan started (while the pool scales up), pods over time,
and whether any busy or reserved pod was deleted (a job lost, or a reservation released,
because its pod was removed). Saves a plot of demand, desired and actual pods to
bench/results/autoscale.png. Last line:
`scale_up_p50_s=… stalled=0 busy_pods_deleted=0 reserved_pods_deleted=0`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import django

from bench.api import Api
from bench.live import RESULTS, ROOT, SERVER_TIMINGS, BenchPlatform, bench_admin, say, wait_for

# The platform's models and services are imported inside functions: only after django.setup().

MAIN_TF = """
resource "terraform_data" "burst" {
  input = "burst"
}
"""
FINAL = {"applied", "errored", "discarded", "cancelled", "planned", "planned_no_changes"}
REMOVED = "removed by the autoscaler"


class Sampler(threading.Thread):
    """Every half second: demand and desired (the latest decision) and the live pods."""

    def __init__(self, pool_id: int) -> None:
        super().__init__(daemon=True)
        self.pool_id = pool_id
        self.samples: list[tuple[float, int, int, int]] = []
        self.stop_at: float | None = None
        self.t0 = time.monotonic()

    def run(self) -> None:
        from django.db import connection

        from agents_app.models import Pod, ScalingDecision

        while self.stop_at is None:
            decision = ScalingDecision.objects.filter(pool_id=self.pool_id).order_by("-id").first()
            pods = Pod.objects.filter(pool_id=self.pool_id, phase__in=["pending", "running"]).count()
            self.samples.append((time.monotonic() - self.t0, decision.demand if decision else 0,
                                 decision.desired if decision else 0, pods))
            time.sleep(0.5)
        connection.close()


def plot(samples: list[tuple[float, int, int, int]], path: Path, title: str) -> None:
    import matplotlib  # heavy: loaded only to plot, and Agg chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s[0] for s in samples]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(t, [s[1] / 3 for s in samples], label="demand / slots per pod", color="tab:gray", linestyle=":")
    ax.step(t, [s[2] for s in samples], where="post", label="desired pods", color="tab:blue")
    ax.step(t, [s[3] for s in samples], where="post", label="actual pods", color="tab:orange")
    ax.set_xlabel("seconds")
    ax.set_ylabel("pods")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=12, help="runs in the burst (default 12)")
    parser.add_argument("--scale-down-delay", type=int, default=20, help="the pool's scale_down_delay in s")
    args = parser.parse_args()

    var = ROOT / "var"
    timings = dict(SERVER_TIMINGS, IAC_AUTOSCALE_INTERVAL_SECONDS="1")
    live = BenchPlatform(var_dir=var, say=say, db_name="iac_bench_autoscale", subdir="bench-autoscale",
                         server_timings=timings)
    live.bootstrap_env()
    os.environ["IAC_AGENT_WORK_ROOT"] = str(live.dir / "agents")  # the pods' work roots
    live.migrate()
    django.setup()
    from agents_app.models import Pod, ScalingDecision
    from agents_app.pods.local import LocalBackend
    from agents_app.services.agents import pool_create
    from tasks_app.dispatch.models import DispatchEvent, Job

    pool = None
    sampler = None
    try:
        base = live.start_servers()
        api = Api(base, bench_admin()[1])
        pool, _ = pool_create(
            name="burst", backend="local", min_replicas=1, max_replicas=4, slots_per_pod=3, scale_up_delay_seconds=5,
            scale_down_delay_seconds=args.scale_down_delay, cooldown_seconds=5,
            warmup_expire_seconds=max(300, args.scale_down_delay + 1), pod_start_wait_seconds=30,
            pod_register_deadline_seconds=60,
        )
        sampler = Sampler(pool.id)
        sampler.start()
        say("==> pool 'burst' (local backend, min 1, max 4, 3 slots per pod): waiting for its first pod")
        wait_for(lambda: Pod.objects.filter(pool=pool, phase="running").exists(), 90, "the first pod")
        workspaces = [api.create_workspace(f"burst-{i}", pool.id, {"main.tf": MAIN_TF}, {}) for i in range(args.runs)]
        say(f"==> burst: {args.runs} runs queued at once")
        runs = [api.queue(ws["id"])["id"] for ws in workspaces]
        deadline = time.monotonic() + 300
        pending: dict[int, dict] = {}
        while len(pending) < len(runs) and time.monotonic() < deadline:
            for r in runs:
                if r not in pending:
                    run = api.run(r)
                    if run["status"] == "apply_pending" and run["warmup_status"] == "ready":
                        pending[r] = run
                    elif run["status"] in FINAL:
                        pending[r] = run
            time.sleep(0.5)
        kept = [r for r in runs if pending.get(r, {}).get("status") == "apply_pending"][-2:]
        for r in runs:
            if r not in kept and pending.get(r, {}).get("status") == "apply_pending":
                api.request("POST", f"/api/v1/runs/{r}/confirm/", json={}, expect=200)
        say(f"==> confirmed {len(runs) - len(kept)} runs; {len(kept)} stay reserved while the pool scales down")
        settle = time.monotonic() + 300

        def confirmed_done() -> bool:
            return all(api.run(r)["status"] in FINAL for r in runs if r not in kept)

        wait_for(confirmed_done, 300, "the confirmed runs to end", interval=1)
        holders = {api.run(r)["warmup_agent"] for r in kept}
        wait_for(lambda: Pod.objects.filter(pool=pool, phase__in=["pending", "running"]).count() <= max(1, len(holders)),
                 args.scale_down_delay + 120, "the pool to scale down", interval=1)
        for r in kept:
            api.request("POST", f"/api/v1/runs/{r}/confirm/", json={}, expect=200)
        while time.monotonic() < settle and not all(api.run(r)["status"] in FINAL for r in runs):
            time.sleep(1)
        time.sleep(3)
        sampler.stop_at = time.monotonic()
        sampler.join(5)

        statuses = {r: api.run(r) for r in runs}
        stalled = sum(1 for run in statuses.values() if run["status"] not in FINAL)
        failed = sum(1 for run in statuses.values() if run["status"] in FINAL and run["status"] != "applied")
        waits = []
        for r in runs:
            plan = Job.objects.filter(task_id=r, kind="plan").order_by("id").first()
            if plan and plan.claimed_at:
                waits.append((plan.claimed_at - plan.task.created_at).total_seconds())
        busy_deleted = Job.objects.filter(pool=pool, error__contains=REMOVED).count()
        reserved_deleted = DispatchEvent.objects.filter(subject="slot", from_state="reserved",
                                                        message__contains=REMOVED).count()
        fast = sum(1 for r in kept if statuses[r].get("apply_path") == "fast")

        say("\nqueued -> plan started (s), by run:")
        say("  " + " ".join(f"{w:.1f}" for w in waits))
        say("\npods over time (s: demand desired actual):")
        last = None
        for t, demand, desired, actual in sampler.samples:
            if (demand, desired, actual) != last:
                say(f"  {t:6.1f}: {demand:3d} {desired:2d} {actual:2d}")
                last = (demand, desired, actual)
        decisions = ScalingDecision.objects.filter(pool=pool).exclude(action="none").order_by("id")
        say("\nscaling actions:")
        for d in decisions:
            say(f"  {d.created_at:%H:%M:%S} {d.action:7s} +{len(d.pods_created)} -{len(d.pods_deleted)}: {d.reason}")
        RESULTS.mkdir(parents=True, exist_ok=True)
        plot(sampler.samples, RESULTS / "autoscale.png",
             f"autoscale: {args.runs} runs, pool min 1 / max 4, 3 slots per pod")
        p50 = statistics.median(waits) if waits else float("nan")
        (RESULTS / "autoscale.json").write_text(json.dumps({
            "at": datetime.now().isoformat(), "runs": args.runs, "queued_to_plan_started_s": waits,
            "samples": sampler.samples, "stalled": stalled, "failed": failed, "busy_pods_deleted": busy_deleted,
            "reserved_pods_deleted": reserved_deleted, "kept_reserved_fast_path": fast,
        }, indent=1))
        say(f"\nplot: {RESULTS / 'autoscale.png'}; runs not applied: {failed}; reserved runs applied on the fast "
            f"path after the scale-down: {fast}/{len(kept)}")
        say(f"scale_up_p50_s={p50:.1f} stalled={stalled} busy_pods_deleted={busy_deleted} "
            f"reserved_pods_deleted={reserved_deleted}")
        return 1 if stalled or busy_deleted or reserved_deleted or failed else 0
    finally:
        if sampler is not None:
            sampler.stop_at = sampler.stop_at or time.monotonic()
        try:
            if pool is not None:
                from agents_app.models import AgentPool

                AgentPool.objects.filter(id=pool.id).update(backend="static")  # the autoscaler lets go of it
        finally:
            # Whatever failed above (the database gone, say): no agent and no server left running.
            if pool is not None:
                backend = LocalBackend()
                for found in backend.list(pool):
                    backend.delete(pool, found.name)
            live.stop()


if __name__ == "__main__":
    sys.exit(main())
