"""Live log fan-out: 200 websocket viewers of one run while its log grows by 5,000 lines.

    python -m bench.live_viewers [--viewers 200] [--lines 5000] [--seconds 10] [--bursts 50]

Brings up its own platform (fresh database `iac_bench_live` on the embedded PostgreSQL, a
Redis of its own, Daphne, a Celery worker with beat), queues one run and claims its plan job
as an agent does (the agent protocol over HTTP: register, claim, heartbeats), then opens N
run-page websockets (`/ws/runs/<id>/?offset=…`, websocket-client, each with a logged-in
session cookie, one thread each) and posts the log through the agent log endpoint
(`POST /agent/v1/jobs/<id>/logs`) in bursts, as terraform prints: `--bursts` bursts spread
over `--seconds`, each burst one chunk of lines (the agent posts what accumulated while its
previous post was in flight).

Latency: from the server receiving a chunk (its LogChunk row's `created_at`, stamped by the
server when it stored the chunk, same clock as this machine) to each viewer having it (the
fragment holding its lines parsed by that viewer's thread). Each line has a number: a viewer
that misses one counts it lost, one it sees twice a duplicate. Prints the per-viewer median,
p99 and max (their distribution over the viewers), all deliveries' median/p99/max, lines
lost and duplicated; saves bench/results/live_viewers.{json,png}. The last line is
machine-readable: `viewers=200 p99_ms=… lost=0 dup=0`.
"""

from __future__ import annotations

import argparse
import os
import platform as pyplatform
import re
import statistics
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from bench import report
from bench.live import RESULTS, PlatformRun, bench_admin, bench_platform, say, wait_for, write_results

# The platform's models and services are imported inside functions: only after django.setup().

LOG_PREFIX = '<div id="run-log" hx-swap-oob="beforeend"><span class="log-chunk" data-end="'
LINE = re.compile(r"L(\d{6}) ")
TARGET_P99_MS = 250


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.live_viewers", description=__doc__.split("\n\n")[0])
    p.add_argument("--viewers", type=int, default=200, help="websocket viewers of the run (default 200)")
    p.add_argument("--lines", type=int, default=5000, help="log lines posted (default 5000)")
    p.add_argument("--seconds", type=float, default=10.0, help="over how long (default 10)")
    p.add_argument("--bursts", type=int, default=50, help="chunks posted, one per burst (default 50)")
    p.add_argument("--name", default="live_viewers", help="results file name under bench/results/")
    return p.parse_args()


class Viewer(threading.Thread):
    """One browser tab: a websocket to the run page, recording when each log line arrives."""

    def __init__(self, url: str, cookie: str, origin: str) -> None:
        super().__init__(daemon=True)
        import websocket  # websocket-client

        self.ws = websocket.create_connection(url, cookie=cookie, origin=origin, timeout=30,
                                              skip_utf8_validation=True)
        self.arrivals: dict[int, float] = {}  # line number -> first arrival (epoch seconds)
        self.lines_seen = 0
        self.fragments = 0
        self.log_messages = 0
        self.error: str | None = None
        self.stopping = False

    def run(self) -> None:
        import websocket

        while not self.stopping:
            try:
                message = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception as exc:  # noqa: BLE001 - recorded, reported
                if not self.stopping:
                    self.error = f"{type(exc).__name__}: {exc}"
                return
            now = time.time()
            if not message:
                continue
            # Cheap on purpose: 200 viewers share this process's CPU with the poster, and the
            # time spent here is added to the latency measured. The line numbers sit outside
            # the colour spans, so they are found in the HTML as it is.
            if not message.startswith(LOG_PREFIX):
                self.fragments += 1
                continue
            self.log_messages += 1
            for number in LINE.findall(message):
                self.lines_seen += 1
                self.arrivals.setdefault(int(number), now)

    def close(self) -> None:
        self.stopping = True
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass


class FakeAgent:
    """The agent protocol over HTTP, as agents_app.agent speaks it, without terraform."""

    def __init__(self, base: str, pool_token: str) -> None:
        from agents_app.protocol import PROTOCOL_VERSION

        self.base = base
        self.http = requests.Session()
        reply = self.http.post(f"{base}/agent/v1/register", headers={"Authorization": f"Bearer {pool_token}"},
                               json={"name": "bench-live-agent", "slots": 1, "protocol_version": PROTOCOL_VERSION})
        reply.raise_for_status()
        self.token = reply.json()["token"]
        self.running: list[int] = []
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeats, daemon=True)
        self._beat.start()

    def call(self, path: str, body: dict, fence: int | None = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        if fence is not None:
            headers["X-Job-Fence"] = str(fence)
        return self.http.post(f"{self.base}/agent/v1/{path}", json=body, headers=headers, timeout=30)

    def claim(self) -> dict:
        reply = self.call("claim?wait=10&max=1", {})
        reply.raise_for_status()
        job = reply.json()["jobs"][0]
        self.running.append(job["id"])
        return job

    def _heartbeats(self) -> None:
        session = requests.Session()
        while not self._stop.wait(2):
            try:
                session.post(f"{self.base}/agent/v1/heartbeat", json={"running_jobs": list(self.running)},
                             headers={"Authorization": f"Bearer {self.token}"}, timeout=10)
            except requests.RequestException:
                pass

    def stop(self) -> None:
        self._stop.set()


def chunk_text(burst: int, first: int, count: int, posted_at: float) -> str:
    # Coloured like terraform's output, so the fan-out carries ANSI-rendered HTML.
    return "".join(
        f"\x1b[1mterraform_data.item[{n % 97}]\x1b[0m: L{n:06d} burst {burst} posted {posted_at:.3f} "
        f"\x1b[32mCreation complete\x1b[0m\n"
        for n in range(first, first + count)
    )


def post_log(agent: FakeAgent, job: dict, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The bursts, on schedule; returns what was posted (seq, lines, POST timings)."""
    per_burst = [args.lines // args.bursts + (1 if i < args.lines % args.bursts else 0) for i in range(args.bursts)]
    interval = args.seconds / args.bursts
    posted: list[dict[str, Any]] = []
    start = time.monotonic()
    first = 0
    for i, count in enumerate(per_burst):
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent = time.time()
        reply = agent.call(f"jobs/{job['id']}/logs", {"seq": i + 1, "text": chunk_text(i, first, count, sent)},
                           fence=job["fence"])
        reply.raise_for_status()
        posted.append({"seq": i + 1, "first": first, "count": count, "post_start": sent, "post_end": time.time()})
        first += count
    return posted


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return report.percentile(values, q)


def analyse(viewers: list[Viewer], posted: list[dict[str, Any]], received_at: dict[int, float]) -> dict[str, Any]:
    """Per chunk and viewer: arrival of the chunk's lines minus the server's receipt."""
    all_ms: list[float] = []
    per_viewer: list[dict[str, float]] = []
    lost = dup = 0
    total = sum(p["count"] for p in posted)
    for v in viewers:
        lost += total - len(v.arrivals)
        dup += v.lines_seen - len(v.arrivals)
        mine: list[float] = []
        for p in posted:
            times = [v.arrivals[n] for n in range(p["first"], p["first"] + p["count"]) if n in v.arrivals]
            if times:
                mine.append((min(times) - received_at[p["seq"]]) * 1000)
        all_ms += mine
        if mine:
            per_viewer.append({"median": statistics.median(mine), "p99": percentile(mine, 99), "max": max(mine)})
    post_ms = [(p["post_end"] - p["post_start"]) * 1000 for p in posted]
    return {
        "deliveries": len(all_ms),
        "all": {"median": statistics.median(all_ms), "p99": percentile(all_ms, 99), "max": max(all_ms)} if all_ms else {},
        "per_viewer": per_viewer,
        "lost": lost,
        "dup": dup,
        "post_ms": {"median": statistics.median(post_ms), "p99": percentile(post_ms, 99), "max": max(post_ms)},
        "latencies_ms": all_ms,
    }


def spread(per_viewer: list[dict[str, float]], key: str) -> list[str]:
    values = [v[key] for v in per_viewer]
    return [f"{min(values):.1f}", f"{statistics.median(values):.1f}", f"{percentile(values, 99):.1f}", f"{max(values):.1f}"]


def plot(result: dict[str, Any], posted: list[dict[str, Any]], viewers: list[Viewer], received_at: dict[int, float],
         path: Path, title: str) -> None:
    import matplotlib  # heavy: loaded only to plot, and Agg chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    lat = sorted(result["latencies_ms"])
    if lat:
        left.plot(lat, [i / len(lat) for i in range(1, len(lat) + 1)])
    left.axvline(TARGET_P99_MS, color="red", linestyle="--", label=f"target p99 {TARGET_P99_MS} ms")
    left.set_xlabel("server receipt → viewer has the chunk (ms)")
    left.set_ylabel("fraction of deliveries")
    left.set_title("delivery latency, all viewers and chunks")
    left.legend()
    t0 = posted[0]["post_start"] if posted else 0
    xs, medians, p99s = [], [], []
    for p in posted:
        lats = []
        for v in viewers:
            times = [v.arrivals[n] for n in range(p["first"], p["first"] + p["count"]) if n in v.arrivals]
            if times:
                lats.append((min(times) - received_at[p["seq"]]) * 1000)
        if lats:
            xs.append(received_at[p["seq"]] - t0)
            medians.append(statistics.median(lats))
            p99s.append(percentile(lats, 99))
    right.plot(xs, medians, marker=".", label="median over viewers")
    right.plot(xs, p99s, marker=".", label="p99 over viewers")
    right.set_xlabel("time of the chunk (s)")
    right.set_ylabel("ms")
    right.set_title("per chunk")
    right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    args = parse_args()
    # The platform's own timings: the one fake agent heartbeats every 2 s and nothing here
    # waits on the control loop. The viewers share one session: the cap on one user's live
    # sockets (IAC_WS_MAX_PER_USER, 50 by default) is raised to let them all in.
    live = bench_platform(db_name="iac_bench_live", subdir="bench-live",
                          server_timings={"IAC_WS_MAX_PER_USER": str(max(args.viewers, 50))})
    viewers: list[Viewer] = []
    agent: FakeAgent | None = None
    result: dict[str, Any] = {}
    posted: list[dict[str, Any]] = []
    received_at: dict[int, float] = {}
    meta: dict[str, Any] = {}

    def close_viewers_and_agent() -> None:
        for viewer in viewers:
            viewer.close()
        if agent is not None:
            agent.stop()

    run = PlatformRun(live, "==> stopping worker, web and the benchmark's redis")
    run.on_stop(close_viewers_and_agent)
    with run:
        live.setup_django()
        from django.conf import settings
        from django.test import Client

        from agents_app.services.agents import pool_create
        from tasks_app.models import LogChunk, Task, Workspace
        from tasks_app.services.configs import configuration_create_from_files
        from tasks_app.services.runs import run_create

        base = live.serve()
        user = bench_admin()[0]
        pool, pool_token = pool_create(name="bench-live", warm_apply=False, backend="static")
        workspace = Workspace.objects.create(name="bench-live", pool=pool)
        configuration_create_from_files(workspace=workspace, files={"main.tf": 'resource "terraform_data" "x" {}\n'}, actor=user)
        task = run_create(workspace=workspace, operation="plan", actor=user)
        agent = FakeAgent(base, pool_token)
        job = agent.claim()
        wait_for(lambda: Task.objects.get(id=task.id).status == "planning", 10, "the run to be planning")

        # A logged-in browser session: the session cookie every viewer presents.
        browser = Client()
        browser.force_login(user)
        cookie = f"{settings.SESSION_COOKIE_NAME}={browser.cookies[settings.SESSION_COOKIE_NAME].value}"
        url = base.replace("http://", "ws://") + f"/ws/runs/{task.id}/?offset=0"
        say(f"==> {args.viewers} viewers of run {task.id} ({url})")
        for _ in range(args.viewers):
            viewer = Viewer(url, cookie, base)
            viewer.start()
            viewers.append(viewer)
        # Every viewer has had its first fragments (the page's parts after the backfill).
        wait_for(lambda: all(v.fragments >= 1 or v.error for v in viewers), 120, "every viewer's first fragments")
        errors = [v.error for v in viewers if v.error]
        if errors:
            raise RuntimeError(f"{len(errors)} viewers failed: {errors[0]}")
        time.sleep(1)
        say(f"==> posting {args.lines} lines in {args.bursts} chunks over {args.seconds:g}s")
        web_pid = next(p.pid for p in live.servers if p.name == "daphne")
        cpu_before = {"web (daphne)": cpu_seconds(web_pid), "this process (viewers, poster)": cpu_seconds(os.getpid())}
        window = time.monotonic()
        posted = post_log(agent, job, args)
        last_line = args.lines - 1

        def everyone_has_it() -> bool:
            return all(last_line in v.arrivals or v.error for v in viewers)

        try:
            wait_for(everyone_has_it, 30, "every viewer to have the last line")
        except TimeoutError:
            say("!! some viewers never got the last line (counted as lost)")
        window = time.monotonic() - window
        cpu = {
            name: round(cpu_seconds(pid) - cpu_before[name], 2)
            for name, pid in (("web (daphne)", web_pid), ("this process (viewers, poster)", os.getpid()))
        }
        time.sleep(0.5)  # late duplicates would arrive now
        received_at = {
            c.seq: c.created_at.timestamp()
            for c in LogChunk.objects.filter(task_id=task.id).only("seq", "created_at")
        }
        result = analyse(viewers, posted, received_at)
        result["viewer_errors"] = [v.error for v in viewers if v.error]
        meta = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "viewers": args.viewers,
            "lines": args.lines,
            "chunks": args.bursts,
            "seconds": args.seconds,
            "log_bytes": Task.objects.get(id=task.id).log_size,
            "cpus": os.cpu_count(),
            "loadavg_end": os.getloadavg(),
            "cpu_seconds": cpu,
            "window_s": round(window, 2),
            "python": pyplatform.python_version(),
        }
    if run.failure is not None:
        return run.exit_code()

    json_path = write_results(args.name, {"meta": meta, **{k: v for k, v in result.items() if k != "latencies_ms"}})
    png_path = RESULTS / f"{args.name}.png"
    header = ["latency (ms)", "min", "median", "p99", "max"]
    rows = [[f"per-viewer {key}", *spread(result["per_viewer"], key)] for key in ("median", "p99", "max")]
    say("")
    say(report.text_table(header, rows, align="lrrrr"))
    a = result["all"]
    say(f"all {result['deliveries']} deliveries (viewer × chunk): median {a['median']:.1f} ms, p99 {a['p99']:.1f} ms, "
        f"max {a['max']:.1f} ms; target p99 ≤ {TARGET_P99_MS} ms")
    p = result["post_ms"]
    say(f"agent log POST (store + publish): median {p['median']:.1f} ms, p99 {p['p99']:.1f} ms, max {p['max']:.1f} ms")
    say(f"lines lost {result['lost']}, duplicated {result['dup']} (over {args.viewers} viewers × {args.lines} lines); "
        f"load average at the end {meta['loadavg_end'][0]:.2f} on {meta['cpus']} CPUs")
    say(f"CPU during the {meta['window_s']:g} s of posting and delivery: "
        + ", ".join(f"{name} {sec:g} s" for name, sec in meta["cpu_seconds"].items()))
    if result["viewer_errors"]:
        say(f"viewer errors: {len(result['viewer_errors'])}, e.g. {result['viewer_errors'][0]}")
    plot(result, posted, viewers, received_at, png_path,
         f"{args.viewers} viewers, {args.lines} lines in {args.bursts} chunks over {args.seconds:g}s")
    say(f"results: {json_path}\nplot: {png_path}")
    say(f"viewers={args.viewers} p99_ms={a['p99']:.0f} lost={result['lost']} dup={result['dup']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
