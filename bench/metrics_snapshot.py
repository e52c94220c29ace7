"""The Grafana dashboard's panels, rendered with matplotlib from a benchmark's /metrics.

    python -m bench.metrics_snapshot [--interval 2] [--png docs/grafana/dashboard.png] \\
        confirm_latency [its arguments, e.g. --runs 3 --name metrics-snapshot]
    python -m bench.metrics_snapshot dispatch --runs 20 --workspaces 5 --agents 2 --name metrics-snapshot

There is no Grafana here, so this is how the README's picture of docs/grafana/iac-platform.json
is made: it runs one of the benchmarks (bench.confirm_latency or bench.dispatch, unchanged, with
the arguments given) and, while that benchmark's platform is up, scrapes its web's /metrics
every --interval seconds (with its bearer token: $IAC_METRICS_TOKEN, else the one the
platform's web wrote into its var dir, `metrics_token`). Then it evaluates the dashboard's queries on
those scrapes (`increase` over the same 5-minute window, `histogram_quantile` with
Prometheus' linear interpolation inside a bucket) and draws the dashboard's time-series panels
into one PNG. The numbers are the platform's own metrics; the rendering is not Grafana's.

It hooks BenchPlatform.start_servers (start scraping once web answers) and
BenchPlatform.stop (one last scrape before the servers stop); nothing else of the benchmark
changes.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.live import ROOT, BenchPlatform, say

Labels = tuple[tuple[str, str], ...]
Scrape = dict[tuple[str, Labels], float]
WINDOW_S = 300.0  # the dashboard's [5m]
PATH_COLORS = {"fast": "tab:green", "rewarmed": "tab:orange", "cold": "tab:blue"}


def parse(text: str) -> Scrape:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class Recorder:
    """Scrapes /metrics every `interval` seconds in a thread: [(seconds since start, scrape)]."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.scrapes: list[tuple[float, Scrape]] = []
        self.errors = 0
        self._url = ""
        self._t0 = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._headers: dict[str, str] = {}

    def start(self, base_url: str, var_dir: Path) -> None:
        # /metrics always needs its token; unset, the web wrote one into its var dir.
        token = os.environ.get("IAC_METRICS_TOKEN") or (var_dir / "metrics_token").read_text().strip()
        self._headers = {"Authorization": f"Bearer {token}"}
        self._url = base_url + "/metrics"
        self._t0 = time.monotonic()
        self.scrape()  # fails loudly (403/401) before the benchmark spends minutes
        self._thread = threading.Thread(target=self._run, name="metrics-scraper", daemon=True)
        self._thread.start()
        say(f"==> scraping {self._url} every {self.interval:g}s")

    def scrape(self) -> None:
        resp = requests.get(self._url, headers=self._headers, timeout=10)
        resp.raise_for_status()
        self.scrapes.append((time.monotonic() - self._t0, parse(resp.text)))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scrape()
            except requests.RequestException:
                self.errors += 1  # a busy server may miss one; the series just has a gap

    def stop(self) -> None:
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(15)
        try:
            self.scrape()
        except requests.RequestException:
            self.errors += 1


@contextmanager
def recording(recorder: Recorder) -> Iterator[None]:
    start_servers, stop = BenchPlatform.start_servers, BenchPlatform.stop

    def start_and_record(self: BenchPlatform) -> str:
        base = start_servers(self)
        recorder.start(base, self.var_dir)
        return base

    def record_and_stop(self: BenchPlatform) -> None:
        recorder.stop()
        stop(self)

    BenchPlatform.start_servers = start_and_record  # type: ignore[method-assign]
    BenchPlatform.stop = record_and_stop  # type: ignore[method-assign]
    try:
        yield
    finally:
        BenchPlatform.start_servers, BenchPlatform.stop = start_servers, stop  # type: ignore[method-assign]


# --- the dashboard's queries, on the recorded scrapes ------------------------------------------


class Series:
    def __init__(self, scrapes: list[tuple[float, Scrape]]) -> None:
        self.scrapes = scrapes
        self.times = [t for t, _ in scrapes]

    def label_values(self, name: str, label: str) -> list[str]:
        return sorted({dict(labels)[label] for _, s in self.scrapes for (n, labels) in s if n == name
                       and label in dict(labels)})

    def _sum(self, scrape: Scrape, name: str, match: dict[str, str], by: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        """sum by (by) (name{match})"""
        out: dict[tuple[str, ...], float] = {}
        for (n, labels), v in scrape.items():
            d = dict(labels)
            if n != name or any(d.get(k) != want for k, want in match.items()):
                continue
            key = tuple(d.get(b, "") for b in by)
            out[key] = out.get(key, 0.0) + v
        return out

    def gauge(self, name: str, match: dict[str, str], by: tuple[str, ...]) -> dict[tuple[str, ...], list[float]]:
        keys = sorted({k for _, s in self.scrapes for k in self._sum(s, name, match, by)})
        return {k: [self._sum(s, name, match, by).get(k, math.nan) for _, s in self.scrapes] for k in keys}

    def increase(self, name: str, match: dict[str, str], by: tuple[str, ...]) -> dict[tuple[str, ...], list[float]]:
        """sum by (by) (increase(name{match}[5m])) at each scrape (window clamped to the start)."""
        out: dict[tuple[str, ...], list[float]] = {}
        for i, (t, s) in enumerate(self.scrapes):
            j = next(k for k, tk in enumerate(self.times) if tk >= t - WINDOW_S)
            now, then = self._sum(s, name, match, by), self._sum(self.scrapes[j][1], name, match, by)
            for key in set(now) | set(out):
                out.setdefault(key, [math.nan] * len(self.scrapes))[i] = max(now.get(key, 0.0) - then.get(key, 0.0), 0.0)
        return out

    def quantile(self, q: float, name: str, match: dict[str, str], by: tuple[str, ...]) -> dict[tuple[str, ...], list[float]]:
        """histogram_quantile(q, sum by (le, by) (increase(name_bucket{match}[5m])))"""
        buckets = self.increase(f"{name}_bucket", match, (*by, "le"))
        groups = sorted({k[:-1] for k in buckets})
        out: dict[tuple[str, ...], list[float]] = {}
        for g in groups:
            les = sorted((float(k[-1]), k) for k in buckets if k[:-1] == g)
            out[g] = [_histogram_quantile(q, [(le, buckets[k][i]) for le, k in les]) for i in range(len(self.scrapes))]
        return out


def _histogram_quantile(q: float, cumulative: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile on cumulative (le, count) pairs: linear inside the bucket
    the rank falls in; in the +Inf bucket, the highest finite bound; NaN without observations."""
    if not cumulative or math.isnan(cumulative[-1][1]) or cumulative[-1][1] <= 0:
        return math.nan
    rank = q * cumulative[-1][1]
    lower, below = 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = le, count
    return lower


# --- the picture -----------------------------------------------------------------------------


def render(recorder: Recorder, png: Path, title: str) -> None:
    import matplotlib  # heavy: loaded only to plot, and Agg chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = Series(recorder.scrapes)
    minutes = [t / 60 for t in s.times]
    pools = s.label_values("iac_slots", "pool")
    pool = {"pool": pools[0]} if len(pools) == 1 else {}
    pool_note = f" (pool {pools[0]})" if len(pools) == 1 else " (all pools)"
    fig, axes = plt.subplots(3, 3, figsize=(18, 12.5))
    fig.suptitle(title, fontsize=13)

    def panel(ax, heading: str, unit: str, lines: list[tuple[str, list[float], dict]], log: bool = False) -> None:
        ax.set_title(heading, fontsize=10.5)
        drawn = False
        for label, ys, style in lines:
            if all(math.isnan(y) for y in ys):
                continue
            ax.plot(minutes, ys, label=label, linewidth=1.6, **style)
            drawn = True
        if drawn:
            ax.legend(fontsize=8, loc="best")
            if log:
                ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "no data in this run", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_ylabel(unit)
        ax.set_xlabel("minutes since the platform started")
        ax.grid(True, alpha=0.3)

    def latency(ax: object, heading: str, metric: str) -> None:
        lines = []
        for q, dash in ((0.5, "-"), (0.9, ":")):
            for (path,), ys in s.quantile(q, metric, {}, ("path",)).items():
                lines.append((f"{path} p{int(q * 100)}", [y * 1000 for y in ys],
                              {"color": PATH_COLORS.get(path, "grey"), "linestyle": dash}))
        panel(ax, heading, "ms", lines, log=True)

    latency(axes[0][0], "Confirm → apply start, p50 / p90 by path", "iac_confirm_to_apply_start_seconds")
    latency(axes[0][1], "Confirm → first apply log line, p50 / p90 by path", "iac_confirm_to_first_apply_log_seconds")

    lines = []
    for q, dash in ((0.5, "-"), (0.99, ":")):
        for (kind,), ys in s.quantile(q, "iac_job_queue_wait_seconds", pool, ("kind",)).items():
            lines.append((f"{kind} p{int(q * 100)}", [y * 1000 for y in ys], {"linestyle": dash}))
    panel(axes[0][2], "Queue wait (queued → claimed), p50 / p99 by kind" + pool_note, "ms", lines, log=True)

    lines = [(outcome, ys, {}) for (outcome,), ys in s.increase("iac_warmups_total", {}, ("outcome",)).items()]
    panel(axes[1][0], "Warmups ended by outcome, increase [5m]", "warmups", lines)

    lines = [(f"p{int(q * 100)} {outcome}", ys, {"linestyle": dash})
             for q, dash in ((0.5, "-"), (0.9, ":"))
             for (outcome,), ys in s.quantile(q, "iac_warmup_duration_seconds", {}, ("outcome",)).items()]
    panel(axes[1][1], "Warmup duration, p50 / p90 by outcome", "s", lines)

    runs = s.gauge("iac_runs", {}, ("status",))
    lines = [(status, ys, {}) for (status,), ys in runs.items() if any(y > 0 for y in ys if not math.isnan(y))]
    panel(axes[1][2], "Runs by status", "runs", lines)

    jobs = s.gauge("iac_jobs", {**pool}, ("kind", "status"))
    lines = [(f"{kind} {status}", ys, {}) for (kind, status), ys in jobs.items()
             if status in ("queued", "running") and any(y > 0 for y in ys if not math.isnan(y))]
    panel(axes[2][0], "Jobs queued / running by kind" + pool_note, "jobs", lines)

    slots = s.gauge("iac_slots", pool, ("state",))
    agents = s.gauge("iac_agents", {**pool, "status": "online"}, ())
    lines = [(f"slots {state}", ys, {}) for (state,), ys in slots.items()]
    lines += [("agents online", ys, {"color": "black", "linestyle": "--"}) for ys in agents.values()]
    panel(axes[2][1], "Agents online, slots by state" + pool_note, "count", lines)

    ax = axes[2][2]
    lines = []
    for q, dash in ((0.5, "-"), (0.99, ":")):
        for (method,), ys in s.quantile(q, "iac_state_backend_request_seconds", {}, ("method",)).items():
            lines.append((f"{method} p{int(q * 100)}", [y * 1000 for y in ys], {"linestyle": dash}))
    conflicts = s.increase("iac_state_backend_lock_conflicts_total", {}, ())
    total = max((v for ys in conflicts.values() for v in ys if not math.isnan(v)), default=0.0)
    panel(ax, f"State backend latency by method; lock conflicts [5m]: {total:g}", "ms", lines, log=True)

    fig.text(0.5, 0.005, "A matplotlib rendering of docs/grafana/iac-platform.json's time-series panels, "
             f"evaluated on {len(s.scrapes)} scrapes of the benchmark platform's /metrics "
             f"(every {recorder.interval:g}s; windows [5m]). Not a Grafana screenshot.",
             ha="center", fontsize=9, color="dimgrey")
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)
    plt.close(fig)


BENCHES: dict[str, str] = {"confirm_latency": "bench.confirm_latency", "dispatch": "bench.dispatch"}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.metrics_snapshot", description=__doc__.split("\n\n")[0])
    p.add_argument("--interval", type=float, default=2.0, help="seconds between scrapes (default 2)")
    p.add_argument("--png", type=Path, default=ROOT / "docs" / "grafana" / "dashboard.png")
    p.add_argument("bench", choices=sorted(BENCHES), help="the benchmark to run and scrape")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="its arguments")
    args = p.parse_args()
    bench_main: Callable[[], int] = importlib.import_module(BENCHES[args.bench]).main
    recorder = Recorder(args.interval)
    sys.argv = [f"python -m {BENCHES[args.bench]}", *args.bench_args]
    started = datetime.now(UTC)
    with recording(recorder):
        rc = bench_main()
    if len(recorder.scrapes) < 2:
        say(f"==> {len(recorder.scrapes)} scrape(s): nothing to draw")
        return rc or 1
    command = " ".join(["python -m", BENCHES[args.bench], *args.bench_args])
    render(recorder, args.png, f"IaC platform dashboard, from the metrics of `{command}` "
                               f"({started:%Y-%m-%d}, {os.cpu_count()} CPUs)")
    say(f"==> {len(recorder.scrapes)} scrapes ({recorder.errors} missed); dashboard panels: {args.png}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
