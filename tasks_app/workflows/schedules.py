"""Drift check schedules: cron expressions (croniter) in IANA time zones. Pure but for the
site's default schedule (IAC_DRIFT_SCHEDULE)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from django.conf import settings

from iacplatform.errors import invalid_field

OFF = "off"


def timezone_problem(tz: str) -> str:
    """What is wrong with `tz` as a drift schedule's time zone ("": nothing)."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return f"'{tz}' is not an IANA time zone (e.g. Europe/Berlin)"
    return ""


def schedule_problem(schedule: str) -> str:
    """What is wrong with `schedule` ("": nothing): "", "off" or a 5-field cron expression."""
    if schedule in ("", OFF) or (len(schedule.split()) == 5 and croniter.is_valid(schedule)):
        return ""
    return f"'{schedule}' is not a 5-field cron expression (e.g. '0 6 * * *': daily at 06:00), nor 'off'"


def drift_schedule_check(schedule: str, tz: str) -> None:
    """Invalid (naming the field) unless `schedule` is "", "off" or a 5-field cron expression
    and `tz` an IANA time zone."""
    if problem := timezone_problem(tz):
        raise invalid_field("drift_timezone", problem)
    if problem := schedule_problem(schedule):
        raise invalid_field("drift_schedule", problem)


def schedule_source(workspace: Any) -> tuple[str, str]:
    """The schedule a workspace's drift checks follow, as set ("off" included), and its time
    zone: its own; else its pool's default (in the pool's time zone); else the site's
    IAC_DRIFT_SCHEDULE (in the workspace's). ("", tz): none."""
    pool = workspace.pool
    if workspace.drift_schedule:
        return workspace.drift_schedule, workspace.drift_timezone
    if pool.drift_schedule:
        return pool.drift_schedule, pool.drift_timezone
    return settings.IAC_DRIFT_SCHEDULE, workspace.drift_timezone


def schedule_key(schedule: str, tz: str) -> str:
    """What Workspace.drift_next_for records of schedule_source: its drift_next_at was
    computed from this (drift.py's SQL builds the same string to find a changed one)."""
    return f"{schedule} {tz}" if schedule else ""


def drift_next(schedule: str, tz: str, after: datetime) -> datetime:
    """The next moment of `schedule` in `tz` after `after` (aware, UTC)."""
    local = after.astimezone(ZoneInfo(tz))
    return croniter(schedule, local).get_next(datetime).astimezone(ZoneInfo("UTC"))


