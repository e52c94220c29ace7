"""Prometheus metrics observed in process: what the platform promises (Confirm → apply, queue
wait, warmups, the state backend), as histograms and counters, served at /metrics by
iacplatform/views_metrics.py together with gauges computed from the database at scrape time.

Pure prometheus_client (no Django, no models), so every service may import it without
breaking the import-linter layers; services call the one-line helpers below.

One registry of our own, not prometheus_client's global one: tests and the view see exactly
these series, and nothing registered by a library leaks in. Every observation happens in the
web process (Daphne, one process: the agent API, Confirm, the state backend), which is the
process /metrics answers from. The one exception is a warmup lost in the Celery worker's sweep
(its agent went offline, or its lease ran out): that count lands in the worker's registry,
which nobody scrapes. The gauges of views_metrics.DatabaseCollector (`iac_jobs{kind="warmup"}`
by status counts lost warmups among the failed ones) come from the database and are right
whichever process changed the rows.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

# No `*_created` series (the time each child was created): in the text format they are
# separate gauges that no panel uses. Process-wide, but nothing else here uses the client.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)

APPLY_PATHS = ("fast", "rewarmed", "cold")
STATE_METHODS = ("GET", "POST", "LOCK", "UNLOCK")
WARMUP_OUTCOMES = ("succeeded", "failed", "lost")

# Confirm → apply start is milliseconds on the warm paths, a few hundred ms cold with a local
# provider mirror, and up to IAC_WARMUP_WAIT_SECONDS (120 s) plus a cold init when Confirm
# waits for a warmup: fine buckets at the bottom, coarse ones up to minutes.
_LATENCY_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                    2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Queued → claimed: tens of ms with a free slot, up to the length of a terraform run (or a
# warmup's wait) when every slot is busy.
_QUEUE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
                  3600.0)
# A warmup is config + terraform init + plan.out: seconds, minutes with a slow registry.
_WARMUP_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# State backend calls are a few database statements; a big state costs more.
_STATE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CONFIRM_TO_APPLY_START = Histogram(
    "iac_confirm_to_apply_start_seconds",
    "Confirm → terraform apply started on the agent, by the path the apply took",
    ["path"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
CONFIRM_TO_FIRST_LOG = Histogram(
    "iac_confirm_to_first_apply_log_seconds",
    "Confirm → the apply's first log line reached the server, by the path the apply took",
    ["path"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "iac_job_queue_wait_seconds",
    "A queued job's wait until an agent was assigned it (queued → claimed), by pool and job kind. "
    "Confirm's warm apply is created already assigned and is not observed.",
    ["pool", "kind"], buckets=_QUEUE_BUCKETS, registry=REGISTRY,
)
WARMUP_DURATION = Histogram(
    "iac_warmup_duration_seconds",
    "A warmup job's time from start (warming) to its end, by outcome",
    ["outcome"], buckets=_WARMUP_BUCKETS, registry=REGISTRY,
)
WARMUPS = Counter(
    "iac_warmups",
    "Warmups that ended, by outcome (succeeded, failed, lost: its agent died or stopped reporting it)",
    ["outcome"], registry=REGISTRY,
)
STATE_REQUEST = Histogram(
    "iac_state_backend_request_seconds",
    "Terraform state backend requests (web's time, authentication included), by method and status",
    ["method", "status"], buckets=_STATE_BUCKETS, registry=REGISTRY,
)
STATE_LOCK_CONFLICTS = Counter(
    "iac_state_backend_lock_conflicts",
    "State LOCK requests refused with 423 because someone else held the lock",
    registry=REGISTRY,
)


def _path(path: str) -> str:
    # A bounded label set: an older agent's blank or unknown path is "unknown".
    return path if path in APPLY_PATHS else "unknown"


def observe_confirm_latency(path: str, seconds: float) -> None:
    CONFIRM_TO_APPLY_START.labels(path=_path(path)).observe(max(seconds, 0.0))


def observe_confirm_first_log(path: str, seconds: float) -> None:
    CONFIRM_TO_FIRST_LOG.labels(path=_path(path)).observe(max(seconds, 0.0))


def observe_queue_wait(pool: str, kind: str, seconds: float) -> None:
    QUEUE_WAIT.labels(pool=pool, kind=kind).observe(max(seconds, 0.0))


def observe_warmup_end(outcome: str, seconds: float | None) -> None:
    """Count a warmup's end; its duration too when its start is known."""
    WARMUPS.labels(outcome=outcome).inc()
    if seconds is not None:
        WARMUP_DURATION.labels(outcome=outcome).observe(max(seconds, 0.0))


def observe_state_request(method: str, status: int, seconds: float) -> None:
    method = method if method in STATE_METHODS else "other"
    STATE_REQUEST.labels(method=method, status=str(status)).observe(seconds)
    if status == 423:
        STATE_LOCK_CONFLICTS.inc()


# Pre-create the children with a known, small label set, so that a fresh process exports
# zeros instead of no series (rate() and "one more observation" need the series to exist).
for _p in APPLY_PATHS:
    CONFIRM_TO_APPLY_START.labels(path=_p)
    CONFIRM_TO_FIRST_LOG.labels(path=_p)
for _o in WARMUP_OUTCOMES:
    WARMUPS.labels(outcome=_o)
