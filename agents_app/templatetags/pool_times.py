"""Relative times for the live pool page, to the second where it matters: "4 s ago" says an
agent is alive, Django's `timesince` ("0 minutes") does not."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.utils import timezone

register = template.Library()


def span(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        hours, minutes = divmod(s // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(s // 3600, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


@register.filter
def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """'4 s ago' (a moment in the past, relative to `now`, default now)."""
    if moment is None:
        return ""
    return f"{span(((now or timezone.now()) - moment).total_seconds())} ago"


@register.filter
def within(moment: datetime | None, now: datetime | None = None) -> str:
    """'in 3 h 20 min' (a moment in the future)."""
    if moment is None:
        return ""
    return f"in {span((moment - (now or timezone.now())).total_seconds())}"
