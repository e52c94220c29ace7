"""Shared looks for every page: `{% load ui %}`.

- `{% status_badge value %}`: a status as a badge with a colour AND its words (colour alone
  says nothing to a colour-blind reader or a screen reader). Works for any of the product's
  states (run, job, slot, warmup, agent, pod, apply path): the tone comes from TONES, the
  words from the value ("apply_pending" reads "apply pending").
- `{% reltime moment %}`: "3 min ago" in a `<time>` whose `datetime` is machine-readable and
  whose `title` (shown on hover) is the exact time, in UTC.
- `{{ job.commands|command_times }}`: the terraform commands a job ran and how long each
  took, as its agent timed them: "init 1.4 s · plan 93 ms · show 47 ms".
- `{{ task.message|masked:masked }}`: the text with the values of `masked` (the context's
  list from selectors.masked_values_for; None: nothing to mask) masked as the log is.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timesince import timesince, timeuntil

from agents_app.redaction import redact
from tasks_app.selectors import duration_text

register = template.Library()

# ok: done and good; busy: moving; wait: needs a person or waits its turn; bad: failed or
# stopped; off: idle / neutral.
TONES: dict[str, str] = {
    "applied": "ok", "planned": "ok", "planned_no_changes": "ok", "online": "ok", "ready": "ok",
    "succeeded": "ok", "running_pod": "ok", "fast": "ok", "idle": "off",
    "pending": "wait", "plan_queued": "wait", "apply_pending": "wait", "queued": "wait", "reserved": "wait",
    "warming": "busy", "planning": "busy", "apply_queued": "busy", "applying": "busy", "running": "busy",
    "claimed": "busy", "starting": "busy", "rewarmed": "busy",
    "errored": "bad", "failed": "bad", "offline": "bad", "lost": "bad", "expired": "bad",
    "cancelled": "off", "discarded": "off", "none": "off", "cold": "off", "deleted": "off",
}

def status_label(value: str) -> str:
    return str(value).replace("_", " ")


@register.simple_tag
def status_badge(value: object, label: str = "") -> SafeString:
    """`<span class="status tone-… status-…">words</span>`; empty value renders nothing."""
    if value in (None, ""):
        return SafeString("")
    key = str(value)
    return format_html(
        '<span class="status tone-{} status-{}" data-status="{}">{}</span>',
        TONES.get(key, "off"), key, key, label or status_label(key),
    )


@register.simple_tag
def reltime(moment: datetime | None, empty: str = "") -> SafeString:
    """`<time datetime="ISO" title="exact UTC">5 minutes ago</time>` ("in 5 minutes" for a
    future moment, "just now" under a minute)."""
    if moment is None:
        return format_html('<span class="muted">{}</span>', empty) if empty else SafeString("")
    now = timezone.now()
    delta = (now - moment).total_seconds()
    if abs(delta) < 60:
        words = "just now"
    elif delta > 0:
        words = f"{timesince(moment, now, depth=1)} ago"
    else:
        words = f"in {timeuntil(moment, now, depth=1)}"
    exact = moment.astimezone(UTC)
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        moment.isoformat(), exact.strftime("%Y-%m-%d %H:%M:%S UTC"), words.replace("\xa0", " "),
    )


def _duration(seconds: float) -> str:
    """"93 ms", "1.4 s"; from a minute on, as the run page's other durations ("125s", "30 min")."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s" if seconds < 60 else duration_text(seconds)


@register.filter
def command_times(commands: object) -> str:
    """"plan 93 ms · show 47 ms" from a job's reported commands ("" for none; a command that
    failed says its exit code)."""
    if not isinstance(commands, list):
        return ""
    parts = []
    for command in commands:
        try:
            took = float(command["ended_at"]) - float(command["started_at"])
            text = f"{command['command']} {_duration(max(took, 0.0))}"
            if command.get("exit_code") not in (0, 2, None):  # 2: `plan -detailed-exitcode` with changes
                text += f" (exit {command['exit_code']})"
        except (KeyError, TypeError, ValueError):
            continue
        parts.append(text)
    return " · ".join(parts)


@register.filter
def masked(text: object, values: list[str] | None) -> object:
    """`text` with `values` masked (tasks_app.redaction.redact); as it is without values."""
    return redact(text, values) if values and isinstance(text, str) else text
