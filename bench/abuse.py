"""Cheap ways to make the server work hard, all at once, while a health probe measures the web.

Brings up its own platform (bench/live.py: a fresh database, its own Redis, Daphne, a Celery
worker with beat; no agents; the platform's own default limits), then for `--seconds` runs
every case below at the same time, each counting what the server answers:

- big-login-post: anonymous `POST /accounts/login/` of `--post-mib` MiB, every other one
  chunked (no Content-Length). Wanted: 413, decided before the CSRF check reads the body.
- ready-hammer: `--ready-threads` threads calling `/healthz/ready` back to back. Wanted: 200,
  one computation a second per process.
- longpolls-one-user: `--longpolls` concurrent `GET /api/v1/runs/<id>/?wait=` of one user's
  token, on a run that will not get there (no agents); each asks again when answered, after
  Retry-After when refused. Wanted: IAC_LONGPOLL_MAX_PER_USER of them waiting, 429 for the rest.
- websockets-one-user: `--websockets` run-page websockets of one browser session, held open,
  each trying again a second after it is closed. Wanted: IAC_WS_MAX_PER_USER open, the rest
  closed with 4429.
- state-diff: the state diff page between two states of `--state-mib` MiB each, back to back.
  Wanted: refused with a message (400), never difflib over both in the request.

A probe in a process of its own (the load generators' threads do not delay its clock) fetches
`/healthz/live` (the event loop) and `/accounts/login/` (a Django page: the threads and the
database) in turn, before and during the cases. Targets: at least five cases, the probe's
p99 during the cases ≤ 500 ms, no 5xx anywhere. Results: bench/results/abuse.json and
abuse.png; the last line is `abuse_cases=… web_p99_ms=… errors_5xx=…`.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import platform as pyplatform
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from bench import report
from bench.live import RESULTS, PlatformRun, bench_admin, bench_platform, say, wait_for, write_results

# The platform's models and services are imported inside functions: only after django.setup().

TARGET_P99_MS = 500.0
TARGET_CASES = 5
PROBE_INTERVAL_S = 0.05
PROBE_PATHS = ("/healthz/live", "/accounts/login/")
WS_CLOSE_TOO_MANY = 4429


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.abuse", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a short, lighter run (10 s; smaller bodies and states; still past every cap)")
    p.add_argument("--seconds", type=float, help="how long the cases run together (default 30; quick 10)")
    p.add_argument("--post-mib", type=float, help="size of each anonymous login POST (default 20; quick 5)")
    p.add_argument("--ready-threads", type=int, help="threads calling /healthz/ready (default 4; quick 2)")
    p.add_argument("--longpolls", type=int,
                   help="concurrent ?wait= long-polls of one user (default 150; quick 110; the cap is 100)")
    p.add_argument("--websockets", type=int,
                   help="websockets of one user (default 80; quick 60; the cap is 50)")
    p.add_argument("--state-mib", type=float, help="size of each of the two states diffed (default 20; quick 5)")
    p.add_argument("--name", default="abuse", help="results file name under bench/results/ (default abuse)")
    args = p.parse_args(argv)
    defaults = {"seconds": (30.0, 10.0), "post_mib": (20.0, 5.0), "ready_threads": (4, 2),
                "longpolls": (150, 110), "websockets": (80, 60), "state_mib": (20.0, 5.0)}
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    return args


# --- the probe, in a process of its own ----------------------------------------------------


def probe_main(base: str, stop_at: float, out: Any) -> None:
    """Fetch PROBE_PATHS in turn until `stop_at` (time.time()); send [(path, start, ms, status)]."""
    session = requests.Session()
    samples: list[tuple[str, float, float, int]] = []
    i = 0
    while time.time() < stop_at:
        path = PROBE_PATHS[i % len(PROBE_PATHS)]
        i += 1
        start = time.time()
        t0 = time.perf_counter()
        try:
            status = session.get(base + path, timeout=30).status_code
        except requests.RequestException:
            status = 0
        samples.append((path, start, (time.perf_counter() - t0) * 1000, status))
        time.sleep(PROBE_INTERVAL_S)
    out.send(samples)
    out.close()


# --- the cases -----------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    wanted: str
    answers: collections.Counter = field(default_factory=collections.Counter)
    latencies_ms: list[float] = field(default_factory=list)
    note: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, answer: int | str, ms: float | None = None) -> None:
        with self.lock:
            self.answers[str(answer)] += 1
            if ms is not None:
                self.latencies_ms.append(ms)

    def attempts(self) -> int:
        return sum(self.answers.values())

    def errors_5xx(self) -> int:
        """Server errors among the answers: an HTTP 5xx (of a request or a websocket's
        handshake) or a websocket closed with 1011 (an error in the server)."""
        def is_error(answer: str) -> bool:
            code = answer.removeprefix("handshake ")
            return (code.isdigit() and int(code) >= 500) or answer == "closed 1011"

        return sum(n for answer, n in self.answers.items() if is_error(answer))


def _timed(call: Callable[[], requests.Response]) -> tuple[int, float, requests.Response | None]:
    t0 = time.perf_counter()
    try:
        response = call()
    except requests.RequestException:
        return 0, (time.perf_counter() - t0) * 1000, None
    return response.status_code, (time.perf_counter() - t0) * 1000, response


def big_login_posts(case: Case, base: str, size: int, stop: threading.Event) -> None:
    body = b"username=someone&password=" + b"x" * size
    headers = {"Content-Type": "application/x-www-form-urlencoded"}

    def chunked() -> Iterator[bytes]:
        view = memoryview(body)
        for i in range(0, len(body), 1 << 20):
            yield bytes(view[i:i + (1 << 20)])

    n = 0
    while not stop.is_set():
        # A new connection each time: the server may close one after refusing its body.
        data: Any = body if n % 2 == 0 else chunked()
        status, ms, _ = _timed(lambda data=data: requests.post(base + "/accounts/login/", data=data, headers=headers,
                                                                timeout=60))
        case.record(status if status else "connection error", ms)
        n += 1


def ready_hammer(case: Case, base: str, stop: threading.Event) -> None:
    session = requests.Session()
    while not stop.is_set():
        status, ms, _ = _timed(lambda: session.get(base + "/healthz/ready", timeout=30))
        case.record(status if status else "connection error", ms)


def long_poll(case: Case, base: str, token: str, run_id: int, wait: float, stop: threading.Event,
              waiting: list[int], waiting_lock: threading.Lock) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    url = f"{base}/api/v1/runs/{run_id}/?wait={wait:g}&until=applied"
    while not stop.is_set():
        with waiting_lock:
            waiting[0] += 1
        try:
            status, ms, response = _timed(lambda: session.get(url, timeout=wait + 30))
        finally:
            with waiting_lock:
                waiting[0] -= 1
        case.record(status if status else "connection error", ms if status != 200 else None)
        if status == 429 and response is not None:
            stop.wait(float(response.headers.get("Retry-After") or 1))
        elif status != 200:
            stop.wait(1.0)


def websocket_holder(case: Case, url: str, cookie: str, origin: str, stop: threading.Event,
                     open_now: list[int], open_lock: threading.Lock) -> None:
    import websocket  # websocket-client

    while not stop.is_set():
        try:
            ws = websocket.create_connection(url, cookie=cookie, origin=origin, timeout=30, skip_utf8_validation=True)
            ws.settimeout(1)  # reads wake up every second to see the end of the window
        except websocket.WebSocketBadStatusException as exc:
            case.record(f"handshake {exc.status_code}")
            stop.wait(1.0)
            continue
        except Exception as exc:  # noqa: BLE001 - counted
            case.record(f"connect failed: {type(exc).__name__}")
            stop.wait(1.0)
            continue
        with open_lock:
            open_now[0] += 1
        answer = "held open to the end"
        try:
            while not stop.is_set():
                try:
                    opcode, data = ws.recv_data(control_frame=True)
                except websocket.WebSocketTimeoutException:
                    continue
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                    answer = f"closed {code}"
                    break
        except Exception as exc:  # noqa: BLE001 - counted
            answer = f"dropped: {type(exc).__name__}"
        finally:
            with open_lock:
                open_now[0] -= 1
            try:
                ws.close(timeout=1)
            except Exception:  # noqa: BLE001
                pass
        case.record(answer)
        if answer != "held open to the end":
            stop.wait(1.0)


def state_diffs(case: Case, base: str, cookie_name: str, cookie: str, workspace_id: int, stop: threading.Event) -> None:
    session = requests.Session()
    session.cookies.set(cookie_name, cookie)
    url = f"{base}/workspaces/{workspace_id}/state/diff/?from=1&to=2"
    note = ""
    while not stop.is_set():
        status, ms, response = _timed(lambda: session.get(url, timeout=120))
        case.record(status if status else "connection error", ms)
        if response is not None and not note:
            text = response.text
            note = "refused: too large to compare" if "too large to compare" in text else (
                "diff computed" if "state-diff" in text else "")
            case.note = note


def big_state(serial: int, size: int) -> bytes:
    """A Terraform 4 state of about `size` bytes: many small resources (what makes difflib slow)."""
    resources = []
    per = 440  # bytes per resource as dumped below
    for i in range(max(1, size // per)):
        resources.append({"mode": "managed", "type": "terraform_data", "name": f"r{i}",
                          "provider": 'provider["terraform.io/builtin/terraform"]',
                          "instances": [{"schema_version": 0, "attributes": {
                              "id": f"{serial}-{i:08d}", "input": f"value {i} of serial {serial}",
                              "output": f"value {i} of serial {serial}", "triggers_replace": None}}]})
    return json.dumps({"version": 4, "terraform_version": "1.11.4", "serial": serial, "lineage": "bench-abuse",
                       "outputs": {}, "resources": resources, "check_results": None}, indent=2).encode()


# --- the report ----------------------------------------------------------------------------


def probe_stats(samples: list[tuple[str, float, float, int]], start: float, end: float) -> dict[str, Any]:
    def pick(path: str | None, during: bool) -> list[float]:
        return [ms for p, at, ms, _ in samples
                if (path is None or p == path) and ((start <= at <= end) if during else at < start)]

    stats: dict[str, Any] = {}
    for path in (None, *PROBE_PATHS):
        key = path or "all"
        during, before = pick(path, True), pick(path, False)
        stats[key] = {
            "n": len(during),
            "before_p50": report.percentile(before, 50), "before_p99": report.percentile(before, 99),
            "p50": report.percentile(during, 50), "p99": report.percentile(during, 99),
            "max": max(during) if during else float("nan"),
        }
    stats["statuses"] = dict(collections.Counter(str(s) for _, at, _, s in samples if start <= at <= end))
    return stats


def case_rows(cases: list[Case]) -> list[list[str]]:
    rows = []
    for case in cases:
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(case.answers.items(), key=lambda kv: -kv[1]))
        lat = case.latencies_ms
        rows.append([case.name, str(case.attempts()), answers or "-",
                     f"{statistics.median(lat):.0f}" if lat else "-", case.wanted + (f" ({case.note})" if case.note else "")])
    return rows


def plot(samples: list[tuple[str, float, float, int]], start: float, end: float, path: Path, title: str) -> None:
    import matplotlib  # heavy: loaded only to plot, and Agg chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5))
    t0 = samples[0][1] if samples else start
    for probe_path in PROBE_PATHS:
        xs = [at - t0 for p, at, _, _ in samples if p == probe_path]
        ys = [ms for p, _, ms, _ in samples if p == probe_path]
        ax.plot(xs, ys, marker=".", linestyle="-", linewidth=0.6, markersize=3, label=f"GET {probe_path}")
    ax.axvspan(start - t0, end - t0, color="orange", alpha=0.15, label="every case at once")
    ax.axhline(TARGET_P99_MS, color="red", linestyle="--", label=f"target p99 {TARGET_P99_MS:.0f} ms")
    ax.set_yscale("log")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probe latency (ms)")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --- main ----------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    # The platform's own defaults ({}): the caps under test are not raised.
    live = bench_platform(db_name="iac_bench_abuse", subdir="bench-abuse", server_timings={})
    stop = threading.Event()
    threads: list[threading.Thread] = []
    probe: multiprocessing.process.BaseProcess | None = None
    cases: list[Case] = []
    samples: list[tuple[str, float, float, int]] = []
    window = (0.0, 0.0)
    meta: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    peaks = {"longpolls_in_flight": 0, "websockets_open": 0}

    def stop_cases_and_probe() -> None:
        stop.set()
        if probe is not None and probe.is_alive():
            probe.terminate()

    run = PlatformRun(live, "==> stopping worker, web and the benchmark's redis")
    run.on_stop(stop_cases_and_probe)
    with run:
        live.setup_django()
        from django.conf import settings
        from django.test import Client

        from agents_app.services.agents import pool_create
        from tasks_app.models import Workspace
        from tasks_app.services.configs import configuration_create_from_files
        from tasks_app.services.runs import run_create
        from tasks_app.services.state import state_push

        base = live.serve()
        limits = {name: getattr(settings, name, None) for name in (
            "IAC_MAX_REQUEST_BYTES", "IAC_LONGPOLL_MAX_PER_USER", "IAC_LONGPOLL_MAX_PER_PROCESS",
            "IAC_WS_MAX_PER_USER", "IAC_STATE_DIFF_MAX_BYTES")}
        say(f"==> the platform's limits: {limits}")
        user, token = bench_admin()
        pool, _ = pool_create(name="bench-abuse", warm_apply=False, backend="static")
        workspace = Workspace.objects.create(name="bench-abuse", pool=pool)
        configuration_create_from_files(workspace=workspace, files={"main.tf": 'resource "terraform_data" "x" {}\n'},
                                        actor=user)
        # No agent will take it: a long-poll for `applied` waits its whole time.
        task = run_create(workspace=workspace, operation="plan_and_apply", actor=user)
        say(f"==> two states of {args.state_mib:g} MiB each")
        for serial in (1, 2):
            state_push(workspace=workspace, data=big_state(serial, int(args.state_mib * 2**20)), lock_id=None,
                       actor=user)
        browser = Client()
        browser.force_login(user)
        session_cookie = browser.cookies[settings.SESSION_COOKIE_NAME].value

        # The probe: a baseline first, then the whole window, then a moment after.
        baseline_s = 1.0 if args.quick else 3.0
        # (A few seconds past the window: the probe's own start and the cases' threads' take time.)
        stop_at = time.time() + baseline_s + args.seconds + 3.0
        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe(duplex=False)
        probe = context.Process(target=probe_main, args=(base, stop_at, sender), daemon=True)
        probe.start()
        sender.close()
        time.sleep(baseline_s)

        cases = [
            Case("big-login-post", "413"),
            Case("ready-hammer", "200"),
            Case("longpolls-one-user", "200 for the first IAC_LONGPOLL_MAX_PER_USER, 429 for the rest"),
            Case("websockets-one-user", "IAC_WS_MAX_PER_USER held open, the rest closed 4429"),
            Case("state-diff", "400: too large to compare"),
        ]
        by_name = {c.name: c for c in cases}
        in_flight, open_now = [0], [0]
        flight_lock, open_lock = threading.Lock(), threading.Lock()
        wait_s = min(60.0, max(5.0, args.seconds / 2))
        ws_url = base.replace("http://", "ws://") + f"/ws/runs/{task.id}/?offset=0"
        ws_cookie = f"{settings.SESSION_COOKIE_NAME}={session_cookie}"
        say(f"==> for {args.seconds:g}s at once: {args.post_mib:g} MiB anonymous login POSTs, "
            f"{args.ready_threads} threads on /healthz/ready, {args.longpolls} long-polls and "
            f"{args.websockets} websockets of one user, the diff of two {args.state_mib:g} MiB states")
        targets: list[tuple[Callable[..., None], tuple]] = [
            (big_login_posts, (by_name["big-login-post"], base, int(args.post_mib * 2**20), stop)),
            *[(ready_hammer, (by_name["ready-hammer"], base, stop)) for _ in range(args.ready_threads)],
            *[(long_poll, (by_name["longpolls-one-user"], base, token, task.id, wait_s, stop, in_flight, flight_lock))
              for _ in range(args.longpolls)],
            *[(websocket_holder, (by_name["websockets-one-user"], ws_url, ws_cookie, base, stop, open_now, open_lock))
              for _ in range(args.websockets)],
            (state_diffs, (by_name["state-diff"], base, settings.SESSION_COOKIE_NAME, session_cookie, workspace.id,
                           stop)),
        ]
        window_start = time.time()
        for target, target_args in targets:
            thread = threading.Thread(target=target, args=target_args, daemon=True)
            thread.start()
            threads.append(thread)
        while time.time() < window_start + args.seconds:
            peaks["longpolls_in_flight"] = max(peaks["longpolls_in_flight"], in_flight[0])
            peaks["websockets_open"] = max(peaks["websockets_open"], open_now[0])
            time.sleep(0.2)
        window = (window_start, time.time())
        stop.set()
        say("==> stopping the cases (long-polls answer within their wait)")
        for thread in threads:
            thread.join(timeout=wait_s + 35)
        # Long-polls still open when the window closed are counted by their answer, if any.
        wait_for(lambda: receiver.poll(0.1), baseline_s + args.seconds + 60, "the probe's samples")
        samples = receiver.recv()
        probe.join(timeout=10)
        meta = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "args": vars(args),
            "limits": limits,
            "peaks": peaks,
            "cpus": os.cpu_count(),
            "loadavg_end": os.getloadavg(),
            "python": pyplatform.python_version(),
            "window_s": round(window[1] - window[0], 1),
        }
    if run.failure is not None:
        return run.exit_code()

    stats = probe_stats(samples, *window)
    probe_5xx = sum(n for s, n in stats["statuses"].items() if s.isdigit() and int(s) >= 500)
    errors_5xx = sum(c.errors_5xx() for c in cases) + probe_5xx
    ran = sum(1 for c in cases if c.attempts() > 0)
    web_p99 = stats["all"]["p99"]
    json_path = write_results(args.name, {
        "meta": meta, "probe": stats,
        "cases": {c.name: {"answers": dict(c.answers), "wanted": c.wanted, "note": c.note,
                           "median_ms": statistics.median(c.latencies_ms) if c.latencies_ms else None}
                  for c in cases},
        "samples": samples}, indent=1)
    png_path = RESULTS / f"{args.name}.png"
    plot(samples, *window, png_path, f"health probe while {ran} abuse cases run ({meta['window_s']:g} s)")

    say("")
    say(report.text_table(["case", "attempts", "answers", "median ms", "wanted"], case_rows(cases), align="lrlrl"))
    say(f"peaks: {peaks['longpolls_in_flight']} long-polls in flight, {peaks['websockets_open']} websockets open "
        f"(caps: {limits.get('IAC_LONGPOLL_MAX_PER_USER')} long-polls, {limits.get('IAC_WS_MAX_PER_USER')} websockets "
        "per user)")
    say("")
    probe_rows = [[f"GET {key}" if key != "all" else "both, in turn", str(s["n"]),
                   f"{s['before_p50']:.1f} / {s['before_p99']:.1f}", f"{s['p50']:.1f}", f"{s['p99']:.1f}",
                   f"{s['max']:.1f}"]
                  for key, s in ((k, stats[k]) for k in ("all", *PROBE_PATHS))]
    say(report.text_table(["health probe (ms)", "n", "before p50 / p99", "p50", "p99", "max"], probe_rows))
    say(f"probe answers during the cases: {stats['statuses']}; load average at the end "
        f"{meta['loadavg_end'][0]:.2f} on {meta['cpus']} CPUs")
    met = ran >= TARGET_CASES and web_p99 <= TARGET_P99_MS and errors_5xx == 0
    say(f"targets: ≥ {TARGET_CASES} cases, probe p99 ≤ {TARGET_P99_MS:.0f} ms, no 5xx: {'met' if met else 'NOT met'}")
    say(f"results: {json_path}\nplot: {png_path}")
    say(f"abuse_cases={ran} web_p99_ms={web_p99:.0f} errors_5xx={errors_5xx}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
