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


def drift_schedule_check(schedule: str, tz: str) -> None:
    """Invalid (naming the field) unless `schedule` is "", "off" or a 5-field cron expression
    and `tz` an IANA time zone."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise invalid_field("drift_timezone", f"'{tz}' is not an IANA time zone (e.g. Europe/Berlin)") from exc
    if schedule in ("", OFF):
        return
    if len(schedule.split()) != 5 or not croniter.is_valid(schedule):
        raise invalid_field("drift_schedule", f"'{schedule}' is not a 5-field cron expression (e.g. '0 6 * * *': "
                                              "daily at 06:00), nor 'off'")


def effective_schedule(workspace: Any) -> str:
    schedule = workspace.drift_schedule or settings.IAC_DRIFT_SCHEDULE
    return "" if schedule == OFF else schedule


def drift_next(schedule: str, tz: str, after: datetime) -> datetime:
    """The next moment of `schedule` in `tz` after `after` (aware, UTC)."""
    local = after.astimezone(ZoneInfo(tz))
    return croniter(schedule, local).get_next(datetime).astimezone(ZoneInfo("UTC"))


