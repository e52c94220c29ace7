"""Archive bomb: how long a real platform takes to refuse a configuration upload of millions of
empty tar headers, and how the login page answers meanwhile.

Brings up its own platform (bench/live.py: a fresh database, its own Redis, Daphne, a Celery
worker; no agents), then uploads a ~10 MiB .tar.gz (just under IAC_MAX_CONFIG_BYTES) of empty
`a.tf` headers through the REST API, several times, while another thread keeps fetching the
login page. Targets: the refusal under 2 s, the login page under 1 s meanwhile. Before the
streaming check, a 2 MiB bomb cost 17 s of CPU and 460 MiB before being refused, and web's other
requests waited behind it. Results: bench/results/upload_bomb.json.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform as pyplatform
import statistics
import tarfile
import threading
import time
from datetime import UTC, datetime
from typing import Any

import requests

from bench.api import Api, RunFailed
from bench.live import PlatformRun, bench_admin, bench_platform, say, write_results
from bench.report import percentile

# The platform's models and services are imported inside functions: only after django.setup().

TARGET_REFUSAL_MS = 2000
TARGET_LOGIN_MS = 1000
HEADERS_PER_GZIP_MEMBER = 4096


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.upload_bomb", description=__doc__.split("\n\n")[0])
    p.add_argument("--uploads", type=int, default=5, help="bomb uploads to time (default 5)")
    p.add_argument(
        "--size-mib", type=float, default=10.0,
        help="compressed size of the bomb in MiB (default 10; kept just under IAC_MAX_CONFIG_BYTES)",
    )
    p.add_argument("--shared-redis", action="store_true", help="use the platform's Redis instead of one of our own")
    return p.parse_args()


def build_bomb(max_bytes: int) -> tuple[bytes, int]:
    """A .tar.gz of empty `a.tf` headers at most `max_bytes` long, and how many headers it has.
    One gzip member of HEADERS_PER_GZIP_MEMBER headers, repeated: concatenated gzip members are
    one valid stream, so a bomb of millions of headers is built in milliseconds."""
    header = tarfile.TarInfo("a.tf").tobuf(format=tarfile.USTAR_FORMAT)
    block = gzip.compress(header * HEADERS_PER_GZIP_MEMBER, compresslevel=9)
    count = max_bytes // len(block)
    return block * count, count * HEADERS_PER_GZIP_MEMBER


class LoginProbe(threading.Thread):
    """Fetches the login page back to back, recording (start, end) of each request."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.url = base_url + "/accounts/login/"
        self.samples: list[tuple[float, float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                status = session.get(self.url, timeout=30).status_code
            except requests.RequestException:
                status = 0
            self.samples.append((start, time.monotonic(), status))
            time.sleep(0.02)


def overlapping_ms(samples: list[tuple[float, float, int]], windows: list[tuple[float, float]]) -> list[float]:
    """Latencies of the requests that were in flight at some point during one of the windows."""
    return [
        (end - start) * 1000
        for start, end, _ in samples
        if any(start < w_end and end > w_start for w_start, w_end in windows)
    ]


def measure(api: Api, workspace_id: int, bomb: bytes, uploads: int, probe: LoginProbe) -> dict[str, Any]:
    path = f"/api/v1/workspaces/{workspace_id}/configuration-versions/"
    time.sleep(1.0)  # a baseline of login latencies before the first upload
    windows: list[tuple[float, float]] = []
    refusals: list[float] = []
    detail = ""
    for i in range(uploads):
        start = time.monotonic()
        resp = api.request("POST", path, data=bomb, headers={"Content-Type": "application/gzip"})
        end = time.monotonic()
        if resp.status_code != 400:
            raise RunFailed(f"upload {i + 1}: HTTP {resp.status_code}, wanted 400: {resp.text[:300]}")
        detail = resp.json().get("detail", "")
        windows.append((start, end))
        refusals.append((end - start) * 1000)
        say(f"    upload {i + 1}/{uploads}: refused in {refusals[-1]:.0f} ms: {detail}")
        time.sleep(0.5)
    probe.stop.set()
    probe.join(timeout=35)
    first = windows[0][0]
    baseline = [(e - s) * 1000 for s, e, _ in probe.samples if e < first]
    during = overlapping_ms(probe.samples, windows)
    failed = sum(1 for _, _, status in probe.samples if status != 200)
    return {
        "refusal_ms": refusals,
        "refusal_detail": detail,
        "login_baseline_ms": baseline,
        "login_during_ms": during,
        "login_failures": failed,
    }


def summarize(result: dict[str, Any]) -> dict[str, float]:
    refusal, during, baseline = result["refusal_ms"], result["login_during_ms"], result["login_baseline_ms"]
    return {
        "refusal_median_ms": statistics.median(refusal),
        "refusal_max_ms": max(refusal),
        "login_baseline_p50_ms": percentile(baseline, 50) if baseline else float("nan"),
        "login_during_p50_ms": percentile(during, 50) if during else float("nan"),
        "login_during_max_ms": max(during) if during else float("nan"),
        "login_during_n": len(during),
    }


def table(summary: dict[str, float], result: dict[str, Any], meta: dict[str, Any]) -> str:
    ok = lambda value, target: "yes" if value < target else "NO"  # noqa: E731
    rows = [
        ("bomb: compressed size / headers", f"{meta['archive_bytes'] / 2**20:.1f} MiB / {meta['headers']:,}", "", ""),
        (f"refusal, median / max (n={len(result['refusal_ms'])})",
         f"{summary['refusal_median_ms']:.0f} / {summary['refusal_max_ms']:.0f} ms", f"< {TARGET_REFUSAL_MS} ms",
         ok(summary["refusal_max_ms"], TARGET_REFUSAL_MS)),
        ("login page before the uploads, p50", f"{summary['login_baseline_p50_ms']:.0f} ms", "", ""),
        (f"login page during the uploads, p50 / max (n={summary['login_during_n']})",
         f"{summary['login_during_p50_ms']:.0f} / {summary['login_during_max_ms']:.0f} ms", f"< {TARGET_LOGIN_MS} ms",
         ok(summary["login_during_max_ms"], TARGET_LOGIN_MS)),
        ("login page errors", str(result["login_failures"]), "0", ok(result["login_failures"], 1)),
    ]
    lines = ["| metric | value | target | met |", "|---|---:|---:|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    live = bench_platform(db_name="iac_bench_bomb", subdir="bench-bomb", server_timings={},
                          shared_redis=args.shared_redis)
    result: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    started = time.monotonic()
    run = PlatformRun(live, "==> stopping worker and web" + ("" if args.shared_redis else " and the benchmark's redis"))
    with run:
        live.setup_django()
        from django.conf import settings

        from agents_app.services.agents import pool_create

        limit = settings.IAC_MAX_CONFIG_BYTES
        bomb, headers = build_bomb(min(int(args.size_mib * 2**20), limit))
        meta = {"archive_bytes": len(bomb), "headers": headers, "unpacked_bytes": headers * tarfile.BLOCKSIZE,
                "max_config_bytes": limit, "max_config_files": settings.IAC_MAX_CONFIG_FILES}
        say(f"==> bomb: {len(bomb):,} bytes gzipped, {headers:,} empty headers "
            f"({headers * tarfile.BLOCKSIZE / 2**30:.1f} GiB unpacked)")

        base = live.serve()
        api = Api(base, bench_admin()[1])
        pool, _ = pool_create(name="bench-bomb", backend="static")
        ws = api.request("POST", "/api/v1/workspaces/", json={"name": "bomb", "pool": pool.id}, expect=201).json()

        probe = LoginProbe(base)
        probe.start()
        say(f"==> uploading the bomb {args.uploads} time(s) while another thread fetches the login page")
        result = measure(api, ws["id"], bomb, args.uploads, probe)
        meta.update({
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "loadavg_end": os.getloadavg(),
            "python": pyplatform.python_version(),
            "wall_s": round(time.monotonic() - started, 1),
        })
    if run.failure is not None:
        return run.exit_code()

    summary = summarize(result)
    json_path = write_results("upload_bomb", {"meta": meta, "summary": summary, "raw": result}, indent=1)
    say("")
    say(table(summary, result, meta))
    say(f"\nresults: {json_path}")
    met = summary["refusal_max_ms"] < TARGET_REFUSAL_MS and summary["login_during_max_ms"] < TARGET_LOGIN_MS
    say(
        f"refusal_median_ms={summary['refusal_median_ms']:.0f} refusal_max_ms={summary['refusal_max_ms']:.0f} "
        f"login_during_p50_ms={summary['login_during_p50_ms']:.0f} "
        f"login_during_max_ms={summary['login_during_max_ms']:.0f} headers={meta['headers']} "
        f"targets_met={'yes' if met else 'no'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
