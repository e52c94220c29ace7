"""A burst of pushes through webhooks: 100 pushes to a repository that 20 workspaces follow.

    python -m bench.webhook [--pushes 100 --workspaces 20]      # make bench-webhook

Brings up its own platform (fresh database `iac_bench_webhook`, its own Redis, Daphne, a
Celery worker with beat, two agents with 5 slots each on a warm pool), a real git server
(`git http-backend` on the loopback, tests/vcs/gitserver.py) with one repository, `envs/wsNN/`
per workspace, a GitHub connection and 20 workspaces following `main`, each in its own
working directory. A first round (one push touching every workspace) warms the agents' plan
dirs; its runs are discarded. Then the burst: the pushes are committed (each touching one
workspace, one in ten touching only docs), pushed, and their webhooks sent signed as GitHub
sends them, back to back, in push order.

Every push that touches a workspace must end with exactly one run of its commit, or be
superseded by a newer push (its run discarded or cancelled naming the newer commit, or never
made because a newer push's run was made first), never both, never twice. Latency: the
webhook sent → the run's plan started on an agent (`planning`), for the first push to each
workspace (none of its runs in progress then; its plan dir warm).

Prints a table, writes bench/results/webhook.json, and ends with
`deliveries=… runs=… superseded=… missing=… duplicates=… push_to_plan_start_p50_ms=…`.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.api import Api
from bench.live import PlatformRun, bench_admin, bench_platform, say, wait_for, write_results
from bench.report import percentile
from tests.vcs.forge import FakeGitHub, push_payload, send
from tests.vcs.gitserver import GitHttpServer, Repo

# The platform's models are imported inside functions: only after django.setup().

DB_NAME = "iac_bench_webhook"
REPO = "org/mono"
MAIN_TF = """
variable "revision" {
  type    = string
  default = "%s"
}

resource "terraform_data" "bench" {
  input = var.revision
}
"""


class WebhookBurst:
    def __init__(self, args: argparse.Namespace, live: Any, api: Api) -> None:
        self.args = args
        self.live = live
        self.api = api
        self.workspaces: list[dict] = []
        self.rows: list[dict[str, Any]] = []

    def setup(self) -> None:
        from agents_app.services.agents import pool_create

        root = self.live.dir / "git"
        for path in (root, self.live.dir / "work"):
            shutil.rmtree(path, ignore_errors=True)
        self.git = GitHttpServer(root / "srv")
        self.repo = Repo(root / "srv", REPO, self.live.dir / "work")
        self.head = self.repo.commit({"README.md": "# mono\n"}, "Start")
        pool, pool_token = pool_create(name="bench-webhook", warm_apply=True, backend="static")
        for i in range(2):
            self.live.start_agent(pool_token, f"wh-{i}", env={}, slots=5)
        # The statuses go to a local GitHub API (tests/vcs/forge.py) that checks and records them.
        self.forge = FakeGitHub()
        made = self.api.request("POST", "/api/v1/vcs-connections/", expect=201, json={
            "name": "gh", "kind": "github", "url": self.git.url, "api_url": self.forge.url,
            "token": self.forge.state.token}).json()
        self.secret = made["webhook_secret"]
        for i in range(self.args.workspaces):
            ws = self.api.request("POST", "/api/v1/workspaces/", expect=201,
                                  json={"name": f"ws{i:02d}", "pool": pool.id}).json()
            self.api.request("PUT", f"/api/v1/workspaces/{ws['id']}/vcs/", expect=200, json={
                "connection": "gh", "repository": REPO, "working_directory": f"envs/ws{i:02d}"})
            self.workspaces.append(ws)

    def push(self, files: dict[str, str], message: str) -> tuple[str, str, float]:
        """Commit and push; returns (before, after, when the webhook was sent), the webhook sent."""
        before = self.head
        self.head = self.repo.commit(files, message)
        payload = push_payload(REPO, before=before, after=self.head, message=message,
                               files={"modified": sorted(files)})
        sent = time.time()
        resp = send(self.api.base, "gh", self.secret, "push", payload)
        if resp.status_code != 202:
            raise RuntimeError(f"webhook refused: {resp.status_code} {resp.text[:300]}")
        return before, self.head, sent

    def settle(self, shas: set[str], timeout: float) -> None:
        """Until every delivery is processed and no run of `shas` is still planning."""
        from tasks_app.models import Task
        from tasks_app.vcs.models import WebhookDelivery

        def done() -> bool:
            if WebhookDelivery.objects.filter(processed_at=None).exists():
                return False
            return not Task.objects.filter(configuration_version__vcs_sha__in=shas,
                                           status__in=["pending", "plan_queued", "planning"]).exists()

        wait_for(done, timeout, "the deliveries to be processed and their plans to end", interval=0.5)

    def warm_up(self) -> None:
        from tasks_app.models import Task
        from tasks_app.services.runs import run_discard

        say(f"==> warm-up: one push touching all {self.args.workspaces} workspaces")
        files = {f"envs/ws{i:02d}/main.tf": MAIN_TF % "warm" for i in range(self.args.workspaces)}
        _, sha, _ = self.push(files, "Warm up")
        self.settle({sha}, self.args.timeout)
        for task in Task.objects.filter(configuration_version__vcs_sha=sha, status="apply_pending"):
            run_discard(task_id=task.id, actor="bench", comment="warm-up round")
        wait_for(lambda: not Task.objects.exclude(status__in=["discarded", "planned_no_changes", "errored",
                                                              "cancelled", "applied", "planned"]).exists(),
                 60, "the warm-up runs to end")

    def burst(self) -> None:
        rng = random.Random(27)
        say(f"==> burst: {self.args.pushes} pushes, webhooks sent back to back")
        for n in range(self.args.pushes):
            if rng.random() < 0.1:
                files, target = {f"docs/note{n}.md": f"note {n}\n"}, None
            else:
                target = rng.randrange(self.args.workspaces)
                files = {f"envs/ws{target:02d}/main.tf": MAIN_TF % f"push-{n}"}
            before, sha, sent = self.push(files, f"Push {n}")
            self.rows.append({"n": n, "sha": sha, "workspace": None if target is None else self.workspaces[target]["id"],
                              "sent": sent})
        self.settle({r["sha"] for r in self.rows}, self.args.timeout)

    def tally(self) -> dict[str, Any]:
        from tasks_app.models import Task, TaskEvent
        from tasks_app.vcs.models import WebhookDelivery

        shas = [r["sha"] for r in self.rows]
        deliveries = WebhookDelivery.objects.filter(event="push", payload__after__in=shas).count()
        runs = list(Task.objects.filter(configuration_version__vcs_sha__in=shas)
                    .values("id", "workspace_id", "status", "message", "configuration_version__vcs_sha"))
        by_key: dict[tuple[int, str], list[dict]] = {}
        for run in runs:
            by_key.setdefault((run["workspace_id"], run["configuration_version__vcs_sha"]), []).append(run)
        superseded_at_processing = {(ws, d.payload["after"]) for d in WebhookDelivery.objects.filter(
            event="push", payload__after__in=shas) for ws in d.superseded}
        counts = {"superseded": 0, "missing": 0, "duplicates": 0, "ran": 0, "untouched": 0}
        first_seen: set[int] = set()
        latencies: list[float] = []
        for row in self.rows:
            if row["workspace"] is None:
                counts["untouched"] += 1
                if any(sha == row["sha"] for (_, sha) in by_key):
                    counts["duplicates"] += 1  # a run for a push that touched nothing
                continue
            made = by_key.get((row["workspace"], row["sha"]), [])
            if len(made) > 1:
                counts["duplicates"] += 1
            if (row["workspace"], row["sha"]) in superseded_at_processing:
                counts["superseded"] += 1
                if made:
                    counts["duplicates"] += 1
            elif made and "superseded by commit" in (made[0]["message"] or ""):
                counts["superseded"] += 1
            elif made:
                counts["ran"] += 1
            else:
                counts["missing"] += 1
            if made and row["workspace"] not in first_seen:
                first_seen.add(row["workspace"])
                started = TaskEvent.objects.filter(task_id=made[0]["id"], to_status="planning").values_list(
                    "created_at", flat=True).first()
                if started is not None:
                    latencies.append((started.timestamp() - row["sent"]) * 1000)
        return {"deliveries": deliveries, "runs": len(runs), **counts, "latencies_ms": latencies,
                "push_to_plan_start_p50_ms": percentile(latencies, 50) if latencies else None,
                "push_to_plan_start_p90_ms": percentile(latencies, 90) if latencies else None}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhook", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=100)
    parser.add_argument("--workspaces", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    # The benchmark's git server listens on the loopback.
    os.environ["IAC_VCS_ALLOW_LOCAL_HOSTS"] = "true"
    os.environ.setdefault("IAC_VCS_TICK_SECONDS", "1")
    live = bench_platform(db_name=DB_NAME, subdir="bench-webhook", server_timings={})
    bench: WebhookBurst | None = None
    started = time.monotonic()
    with PlatformRun(live) as run:
        live.setup_django()
        base = live.serve()
        bench = WebhookBurst(args, live, Api(base, bench_admin()[1]))
        bench.setup()
        bench.warm_up()
        bench.burst()
        summary = bench.tally()
        summary["forge_statuses"] = len(bench.forge.statuses())
        summary["forge_violations"] = bench.forge.state.violations
        bench.git.stop()
        bench.forge.stop()
    if run.failure is not None:
        return run.exit_code()
    assert bench is not None
    write_results("webhook", {"when": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
                              "loadavg_end": os.getloadavg(), "wall_s": round(time.monotonic() - started, 1),
                              "pushes": args.pushes, "workspaces": args.workspaces, "summary": summary})
    say("")
    say("| pushes | touching a workspace | ran | superseded | missing | duplicates | p50 ms | p90 ms |")
    say("|---|---|---|---|---|---|---|---|")
    p50, p90 = summary["push_to_plan_start_p50_ms"], summary["push_to_plan_start_p90_ms"]

    def n(v: float | None) -> str:
        return "nan" if v is None else f"{v:.0f}"

    say(f"| {args.pushes} | {args.pushes - summary['untouched']} | {summary['ran']} | {summary['superseded']} | "
        f"{summary['missing']} | {summary['duplicates']} | {n(p50)} | {n(p90)} |")
    say(f"deliveries={summary['deliveries']} runs={summary['runs']} superseded={summary['superseded']} "
        f"missing={summary['missing']} duplicates={summary['duplicates']} push_to_plan_start_p50_ms={n(p50)}")
    return 0 if summary["missing"] == 0 and summary["duplicates"] == 0 else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
