"""The control loop's fallback tick, run by web (ASGI) processes.

Celery beat ticks the sweep through the broker, Redis: while Redis (or the worker, or beat)
is down, nothing would declare agents offline, expire leases, re-derive follow-ups or start
queues. So every web process runs a daemon thread (started by iacplatform/asgi.py, never by
manage.py commands or tests) that, every IAC_SWEEP_INTERVAL_SECONDS, reads when the last
*Celery* sweep completed (`SweepHeartbeat.CELERY`) and, when that is older than
IAC_SWEEP_FALLBACK_AFTER_SECONDS, runs the sweep (tasks_app.services.sweep) itself,
recording its own heartbeat (`SweepHeartbeat.WEB`). The sweep's PostgreSQL advisory try-lock keeps several web processes
and Celery from sweeping at once. Celery stays the normal path: as soon as its heartbeat is
fresh again, web stops. One log line when web takes over, one when Celery is back.
"""

from __future__ import annotations

import datetime
import logging
import threading

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from tasks_app.models import SweepHeartbeat
from tasks_app.services import sweep

log = logging.getLogger(__name__)


def fallback_due(*, now: datetime.datetime, celery_at: datetime.datetime | None,
                 web_at: datetime.datetime | None, interval: float, after: float) -> bool:
    """Whether a web process should sweep now: Celery's last sweep is older than `after`
    (or there was none), and no web process swept in the last `interval` (so that several
    web processes together keep the normal rate, not a multiple of it)."""
    if celery_at is not None and (now - celery_at).total_seconds() <= after:
        return False
    return web_at is None or (now - web_at).total_seconds() >= interval * 0.9


class FallbackSweeper:
    """One per process: `tick()` decides and sweeps; `run_forever()` is the thread's loop."""

    def __init__(self) -> None:
        self.active = False  # this process is sweeping in Celery's place
        # No Celery sweep ever recorded counts as stale from this process's start: at a fresh
        # install's start, the worker gets the usual grace before web takes over.
        self.started_at = timezone.now()
        self._stop = threading.Event()
        self.ticks = 0

    def tick(self) -> dict | None:
        """Say this web process is up (agents can reach the platform: sweep.web_alive);
        sweep if Celery's sweep is stale; the sweep's result, or None when not due."""
        sweep.web_alive(starting=self.ticks == 0)
        self.ticks += 1
        rows = dict(SweepHeartbeat.objects.values_list("id", "finished_at"))
        interval = settings.IAC_SWEEP_INTERVAL_SECONDS
        after = settings.IAC_SWEEP_FALLBACK_AFTER_SECONDS
        celery_at = rows.get(SweepHeartbeat.CELERY)
        if not fallback_due(now=timezone.now(), celery_at=celery_at or self.started_at, web_at=rows.get(SweepHeartbeat.WEB),
                            interval=interval, after=after):
            if self.active and celery_at is not None and (timezone.now() - celery_at).total_seconds() <= after:
                self.active = False
                log.warning("the Celery sweep runs again: this web process stops its fallback sweep")
            return None
        result = sweep.sweep(runner=SweepHeartbeat.WEB)
        # Skipped: someone holds the sweep's lock (a long Celery sweep, whose heartbeat comes
        # at its end, or another web process): nothing taken over, nothing to say.
        if not result.get("skipped") and not self.active:
            self.active = True
            age = "never" if celery_at is None else f"{(timezone.now() - celery_at).total_seconds():.0f}s ago"
            log.warning("the last Celery sweep finished %s (more than %gs): this web process runs the control "
                        "loop every %gs until Celery sweeps again (is Redis, the worker or beat down?)",
                        age, after, interval)
        return result

    def run_forever(self) -> None:
        failing = False
        wait = 0.0  # the first tick at once: a restarted web tells the sweep it is back
        while not self._stop.wait(wait):
            wait = settings.IAC_SWEEP_INTERVAL_SECONDS
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the thread must outlive a database outage
                if not failing:  # once per streak: a database outage would log every tick
                    log.exception("the web fallback sweep failed (retrying every %gs)",
                                  settings.IAC_SWEEP_INTERVAL_SECONDS)
                failing = True
            else:
                if failing:
                    log.info("the web fallback sweep works again")
                failing = False
            finally:
                close_old_connections()

    def stop(self) -> None:
        self._stop.set()


_started: FallbackSweeper | None = None
_lock = threading.Lock()


def start() -> FallbackSweeper | None:
    """Start the fallback thread once per process (None when IAC_SWEEP_FALLBACK_AFTER_SECONDS
    is 0). Called by iacplatform/asgi.py, so only processes serving the platform run it."""
    global _started
    if settings.IAC_SWEEP_FALLBACK_AFTER_SECONDS <= 0:
        return None
    with _lock:
        if _started is None:
            _started = FallbackSweeper()
            threading.Thread(target=_started.run_forever, name="iac-sweep-fallback", daemon=True).start()
    return _started
