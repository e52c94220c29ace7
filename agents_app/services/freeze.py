"""Freeze windows, evaluated: is a pool frozen now, until when, and when does it freeze next.

Pure functions of the windows and a clock (`now`, injected; the database is read once per
pool, by `pool_freeze`), so every rule below is unit-tested without waiting for a Sunday:

- A weekly occurrence is made of wall-clock times in the window's time zone, for each
  selected weekday: 22:00-06:00 on a night when the clocks change lasts 7 or 9 hours, not
  8, and starts at 22:00 local time on either side of the change.
- A wall-clock time the clocks skip (02:30 on a spring-forward night) starts or ends at the
  moment the clocks jump (03:00 summer time); a time that happens twice (02:30 on a
  fall-back night) starts at its first and ends at its second occurrence: the ambiguity
  always makes the freeze longer, never shorter.
- Overlapping or touching occurrences (of one window or several) are one freeze: it lasts
  until the last of them ends.
- A lifted occurrence ends when it was lifted; the next occurrence freezes again.

This is the lowest service layer (below tasks_app.selectors): it reads models only. The
autoscaler asks `pool_frozen_until` (desired pods = 0 while frozen); dispatch, Confirm, the
waiting reasons and the sweep ask `pool_freeze`.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.utils import timezone

from agents_app.models import WEEKDAYS, FreezeKind, FreezeWindow

# How far back and ahead occurrences are looked for. Back: a weekly occurrence lasts at most
# 24 hours, and the end of the last freeze matters to the no-agent bound for a while.
LOOKBACK = timedelta(days=8)
# Ahead: a freeze made of back-to-back occurrences (every day, 24 hours) is reported as
# ending here, not never; the next start is looked for this far.
HORIZON = timedelta(days=35)


@dataclass(frozen=True)
class Occurrence:
    start: datetime  # aware, UTC
    end: datetime
    window: FreezeWindow


@dataclass(frozen=True)
class Freeze:
    """A pool's freeze state at one moment."""

    until: datetime | None = None  # frozen now, until then (the merged end); None: not frozen
    window: FreezeWindow | None = None  # the window whose occurrence ends the freeze
    next_start: datetime | None = None  # the next freeze after this one (or from now)
    next_window: FreezeWindow | None = None
    thawed_at: datetime | None = None  # not frozen: when the last freeze ended (None: none lately)

    @property
    def frozen(self) -> bool:
        return self.until is not None


def moment_text(moment: datetime) -> str:
    """A freeze's end in words, in the server's time zone: 2026-03-29 06:00:00 UTC."""
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S %Z")


def freeze_text(freeze: Freeze) -> str:
    """'frozen until 2026-03-29 06:00:00 UTC (nightly maintenance)': the one wording."""
    assert freeze.until is not None and freeze.window is not None
    return f"frozen until {moment_text(freeze.until)} ({freeze.window.name})"


def _instant(day: date, at: time, tz: zoneinfo.ZoneInfo, *, late: bool) -> datetime:
    """The UTC instant of wall-clock `at` on `day` in `tz`. A time that happens twice: its
    first (`late`: its second) occurrence. A time the clocks skip: the moment they jump."""
    naive = datetime.combine(day, at)
    first, second = naive.replace(tzinfo=tz, fold=0), naive.replace(tzinfo=tz, fold=1)
    a, b = first.astimezone(UTC), second.astimezone(UTC)
    if a == b:
        return a
    lo, hi = min(a, b), max(a, b)
    if a.astimezone(tz).replace(tzinfo=None) == naive:  # it exists: it happens twice
        return hi if late else lo
    # Skipped: the first instant whose wall-clock time is not before `naive` (the jump).
    # Local time only grows across a spring-forward gap: bisect, in whole seconds.
    lo_s, hi_s = int(lo.timestamp()), int(hi.timestamp()) + 1
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if datetime.fromtimestamp(mid, tz).replace(tzinfo=None) >= naive:
            hi_s = mid
        else:
            lo_s = mid
    return datetime.fromtimestamp(hi_s, UTC)


def window_occurrences(window: FreezeWindow, start: datetime, end: datetime) -> list[Occurrence]:
    """The window's occurrences that overlap [start, end), as scheduled (lifts not applied)."""
    if window.kind == FreezeKind.ONE_OFF:
        if window.starts_at is None or window.ends_at is None:
            return []
        s, e = window.starts_at.astimezone(UTC), window.ends_at.astimezone(UTC)
        return [Occurrence(s, e, window)] if s < end and e > start and s < e else []
    if window.start_time is None or window.end_time is None or not window.weekdays:
        return []
    tz = zoneinfo.ZoneInfo(window.time_zone)
    days = {WEEKDAYS.index(d) for d in window.weekdays if d in WEEKDAYS}
    found = []
    day = start.astimezone(tz).date() - timedelta(days=1)  # yesterday's may still run
    last = end.astimezone(tz).date()
    while day <= last:
        if day.weekday() in days:
            s = _instant(day, window.start_time, tz, late=False)
            end_day = day if window.end_time > window.start_time else day + timedelta(days=1)
            e = _instant(end_day, window.end_time, tz, late=True)
            if s < e and s < end and e > start:
                found.append(Occurrence(s, e, window))
        day += timedelta(days=1)
    return found


def _lifted(occurrence: Occurrence) -> Occurrence | None:
    """The occurrence as it is after a lift: ended at the lift, or untouched."""
    lifted = occurrence.window.lifted_at
    if lifted is None or not occurrence.start <= lifted < occurrence.end:
        return occurrence
    if lifted <= occurrence.start:
        return None
    return Occurrence(occurrence.start, lifted, occurrence.window)


def occurrences(windows: Iterable[FreezeWindow], start: datetime, end: datetime) -> list[Occurrence]:
    """The enabled windows' occurrences overlapping [start, end), lifts applied, by start."""
    found = []
    for window in windows:
        if not window.enabled:
            continue
        for occurrence in window_occurrences(window, start, end):
            kept = _lifted(occurrence)
            if kept is not None:
                found.append(kept)
    return sorted(found, key=lambda o: (o.start, o.end))


def freeze_at(windows: Iterable[FreezeWindow], now: datetime) -> Freeze:
    """The freeze state the windows give at `now` (pure)."""
    now = now.astimezone(UTC)
    found = occurrences(list(windows), now - LOOKBACK, now + HORIZON)
    active = [o for o in found if o.start <= now < o.end]
    thawed = max((o.end for o in found if o.end <= now), default=None)
    if not active:
        nxt = next((o for o in found if o.start > now), None)
        return Freeze(next_start=nxt.start if nxt else None, next_window=nxt.window if nxt else None,
                      thawed_at=thawed)
    last = max(active, key=lambda o: o.end)
    until, window = last.end, last.window
    # Merge: an occurrence that starts before (or as) the freeze ends extends it.
    for o in found:
        if o.start <= until < o.end:
            until, window = o.end, o.window
    nxt = next((o for o in found if o.start > until), None)
    return Freeze(until=until, window=window, next_start=nxt.start if nxt else None,
                  next_window=nxt.window if nxt else None)


def _pool_id(pool: Any) -> int:
    return pool if isinstance(pool, int) else pool.id


def pool_windows(pool: Any) -> list[FreezeWindow]:
    return list(FreezeWindow.objects.filter(pool_id=_pool_id(pool), enabled=True))


def pool_freeze(pool: Any, now: datetime | None = None) -> Freeze:
    """The pool's (an AgentPool or its id) freeze state at `now` (default: now). One query."""
    return freeze_at(pool_windows(pool), now or timezone.now())


def pool_frozen_until(pool: Any, now: datetime | None = None) -> datetime | None:
    """When the pool's current freeze ends (merged across overlapping windows); None when
    it is not frozen at `now` (default: now). The autoscaler wants 0 pods until then."""
    return pool_freeze(pool, now).until


def window_active_occurrence(window: FreezeWindow, now: datetime) -> Occurrence | None:
    """The window's own occurrence at `now` (lifts applied), if one is active."""
    now = now.astimezone(UTC)
    for o in occurrences([window], now - LOOKBACK, now + timedelta(seconds=1)):
        if o.start <= now < o.end:
            return o
    return None
