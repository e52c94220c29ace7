"""Health endpoints for probes, load balancers and monitors: `/healthz/live` and `/healthz/ready`.

A bare ASGI app, routed by iacplatform/asgi.py before Django (like the claim long-poll):
probes call the pod's IP, and Django's CommonMiddleware would refuse that Host (ALLOWED_HOSTS
names the platform's own hosts only). These answers build no URL from the Host, so they can
skip the check safely.

- live: the process answers. No dependency is checked: a database outage must not get every
  web pod restarted.
- ready: PostgreSQL, Redis, migrations and the control loop's last sweep (Celery's; while it is
  stale the web processes sweep, and the check says so). 503 only when
  PostgreSQL is unreachable or migrations are missing: then nothing works. Redis down or a
  late sweep is "degraded" with 200: pages, the API and the state backend still work (agents
  claim from the database, web sweeps: docs/architecture.md, "Without Redis"), and taking every web pod out of the
  load balancer would turn a partial outage into a full one.

The PostgreSQL and Redis probes are django-health-check's (`Database`, `Redis`); its view is
not used because it knows only healthy / unhealthy (500), not "degraded with 200". Its check
results carry the error and the time taken, which is what we report.

Anyone may call ready, as often as they like: its answer is computed at most once a second
per process (callers meanwhile share it, and callers during a computation wait for that
one), its database checks take pooled connections, its Redis ping a connection of one small
pool per process, and the migrations are compared with the code only until they are found
applied, then again every MIGRATIONS_RECHECK_SECONDS (building Django's migration graph
is the expensive part; applied migrations do not come undone under a running process).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import math
import time
import typing
import weakref
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone
from health_check.base import HealthCheck, HealthCheckResult
from health_check.checks import Database
from health_check.contrib.redis import Redis
from health_check.exceptions import ServiceUnavailable, ServiceWarning
from redis.asyncio import ConnectionPool
from redis.asyncio import Redis as RedisClient

OK, DEGRADED, DOWN = "ok", "degraded", "down"
# How long one computed readiness answers every caller: a probe every few seconds sees a
# change within a second, a caller hammering the endpoint costs one check a second.
READY_CACHE_SECONDS = 1.0
# Once every migration is applied, the check is repeated this rarely.
MIGRATIONS_RECHECK_SECONDS = 300.0
# A probe's whole budget is a few seconds (Kubernetes' default timeout is 1 s, people raise it
# to a few): a check that hangs longer is reported as failed rather than hanging the probe.
CHECK_TIMEOUT = datetime.timedelta(seconds=3)


def sweep_late_after() -> float:
    """Seconds without a completed sweep before the worker or beat count as not alive: a few
    missed ticks, never less than a minute (a long sweep or a worker restart is normal)."""
    return max(60.0, 6 * settings.IAC_SWEEP_INTERVAL_SECONDS)


@dataclasses.dataclass
class DatabaseCheck(Database):
    timeout = CHECK_TIMEOUT


@dataclasses.dataclass
class Migrations(HealthCheck):
    """Every migration on disk is applied: code newer than its schema fails in odd places."""

    timeout = CHECK_TIMEOUT
    # When every migration was last found applied (monotonic); None: not yet, or not since.
    applied_at: typing.ClassVar[float | None] = None

    def run(self) -> None:
        applied_at = Migrations.applied_at
        if applied_at is not None and time.monotonic() - applied_at < MIGRATIONS_RECHECK_SECONDS:
            return
        connection = connections["default"]
        with connection.temporary_connection():
            executor = MigrationExecutor(connection)
            plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        Migrations.applied_at = None if plan else time.monotonic()
        if plan:
            names = ", ".join(f"{m.app_label}.{m.name}" for m, _ in plan[:5])
            raise ServiceUnavailable(f"{len(plan)} migration(s) not applied: {names}{', ...' if len(plan) > 5 else ''}")


@dataclasses.dataclass
class Sweep(HealthCheck):
    """The control loop ran recently: Celery beat ticks it and a worker runs it, so a recent
    completed Celery sweep means both are alive. While it is stale the web processes sweep
    instead (tasks_app/sweep_fallback.py): the loop runs, but that is a warning (degraded)
    too, and it says which."""

    timeout = CHECK_TIMEOUT
    last: datetime.datetime | None = dataclasses.field(default=None, repr=False)
    web_last: datetime.datetime | None = dataclasses.field(default=None, repr=False)

    def run(self) -> None:
        from tasks_app.models import SweepHeartbeat  # an app model: importable only after setup

        connection = connections["default"]
        try:
            with connection.temporary_connection():
                rows = dict(SweepHeartbeat.objects.values_list("id", "finished_at"))
        except DatabaseError as exc:  # its table not migrated yet: the migrations check says so
            raise ServiceWarning("the sweep's record cannot be read") from exc
        self.last, self.web_last = rows.get(SweepHeartbeat.CELERY), rows.get(SweepHeartbeat.WEB)
        problem = sweep_problem(self.last, timezone.now(), self.web_last)
        if problem:
            raise ServiceWarning(problem)


def sweep_problem(finished_at: datetime.datetime | None, now: datetime.datetime,
                  web_finished_at: datetime.datetime | None = None) -> str:
    """Why the last Celery sweep's time (`finished_at`) means the control loop may be stopped,
    or runs only in the web processes' fallback (`web_finished_at`); "" when it is fine."""
    celery_age = None if finished_at is None else (now - finished_at).total_seconds()
    web_age = None if web_finished_at is None else (now - web_finished_at).total_seconds()
    web_runs = web_age is not None and web_age <= sweep_late_after()
    fallback_after = settings.IAC_SWEEP_FALLBACK_AFTER_SECONDS or sweep_late_after()
    if celery_age is not None and (celery_age <= fallback_after or (celery_age <= sweep_late_after() and not web_runs)):
        return ""
    if web_runs:
        last = "no Celery sweep has completed yet" if celery_age is None else f"the last Celery sweep was {celery_age:.0f}s ago"
        return (f"{last}: the control loop runs in the web processes instead (last web sweep {web_age:.0f}s ago); "
                "are Redis, the Celery worker and beat running?")
    if celery_age is None:
        return "no sweep has completed yet: are the Celery worker and beat running?"
    return f"last sweep {celery_age:.0f}s ago: are the Celery worker and beat running?"


# One pool per event loop (a process serves from one; an asyncio connection belongs to its
# loop): the ping reuses a connection instead of opening one per call.
_redis_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ConnectionPool] = weakref.WeakKeyDictionary()


def _redis_client() -> RedisClient:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # health-check's repr of the check, outside a loop
        return RedisClient.from_url(settings.REDIS_URL)
    pool = _redis_pools.get(loop)
    if pool is None:
        pool = _redis_pools[loop] = ConnectionPool.from_url(
            settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2, max_connections=4)
    # health-check closes the client after each ping: a client on a pool it was given does
    # not close the pool.
    return RedisClient(connection_pool=pool)


def _entry(result: HealthCheckResult, failed: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"status": OK if result.error is None else failed,
                             "ms": round(result.time_taken * 1000, 1)}
    if result.error is not None:
        entry["error"] = str(result.error)
    return entry


async def readiness() -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /healthz/ready."""
    start = time.perf_counter()
    db, redis = await asyncio.gather(DatabaseCheck().get_result(), Redis(client_factory=_redis_client).get_result())
    checks = {"database": _entry(db, DOWN), "redis": _entry(redis, DEGRADED)}
    if db.error is None:
        sweep_check = Sweep()
        migrations, sweep = await asyncio.gather(Migrations().get_result(), sweep_check.get_result())
        checks["migrations"] = _entry(migrations, DOWN)
        checks["sweep"] = _entry(sweep, DEGRADED)
        if sweep_check.last is not None:
            checks["sweep"]["last_sweep_at"] = sweep_check.last.isoformat()
        if sweep_check.web_last is not None:
            checks["sweep"]["last_web_sweep_at"] = sweep_check.web_last.isoformat()
    else:  # both read the database: nothing to learn, and each would wait for it again
        checks["migrations"] = {"status": "unknown", "ms": 0.0, "error": "database unreachable"}
        checks["sweep"] = {"status": "unknown", "ms": 0.0, "error": "database unreachable"}
    statuses = {c["status"] for c in checks.values()}
    overall = DOWN if DOWN in statuses or "unknown" in statuses else DEGRADED if DEGRADED in statuses else OK
    body = {"status": overall, "checks": checks, "ms": round((time.perf_counter() - start) * 1000, 1)}
    return (503 if overall == DOWN else 200), body


@dataclasses.dataclass
class _Answer:
    at: float = -math.inf  # monotonic time it was computed
    value: tuple[int, dict[str, Any]] | None = None
    running: asyncio.Task | None = None


_ready_answer = _Answer()


async def _refresh() -> tuple[int, dict[str, Any]]:
    value = await readiness()
    _ready_answer.value, _ready_answer.at = value, time.monotonic()
    return value


async def cached_readiness() -> tuple[int, dict[str, Any]]:
    """readiness(), computed at most once per READY_CACHE_SECONDS: callers meanwhile get the
    last answer, callers during a computation share it."""
    answer = _ready_answer
    if answer.value is not None and time.monotonic() - answer.at < READY_CACHE_SECONDS:
        return answer.value
    running = answer.running
    if running is None or running.done() or running.get_loop() is not asyncio.get_running_loop():
        running = answer.running = asyncio.ensure_future(_refresh())
    # Shielded: a caller that goes away does not cancel the others' answer.
    return await asyncio.shield(running)


def liveness() -> tuple[int, dict[str, Any]]:
    return 200, {"status": OK, "checks": {"process": {"status": OK, "ms": 0.0}}}


async def _send(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"),
        (b"cache-control", b"no-store"),
        (b"content-length", str(len(data)).encode()),
    ]})
    await send({"type": "http.response.body", "body": data})


PATHS = ("/healthz/live", "/healthz/ready")


async def health_asgi(scope: dict, receive: Any, send: Any) -> None:
    """Serves PATHS (any method but the body is ignored; HEAD answers headers only)."""
    if scope["path"].rstrip("/") == "/healthz/ready":
        status, body = await cached_readiness()
    else:
        status, body = liveness()
    if scope.get("method") == "HEAD":
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b""})
        return
    await _send(send, status, body)
