"""Log format: today's plain text (default) or one JSON object per line (IAC_LOG_FORMAT=json).

Everything logs through the standard library (Django, Celery, Daphne, our services), so JSON
is a *formatter*: structlog's ProcessorFormatter renders every stdlib record, whoever made it,
as one line with `event`, `level`, `logger`, `timestamp` and whatever ids the code doing the
work bound with `bound(...)` (contextvars: they follow the request, the Celery task or the
thread without being passed down through every call).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import structlog

FORMATS = ("text", "json")


def _drop_none(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if v is not None}


def json_formatter() -> logging.Formatter:
    """A stdlib formatter rendering each record as one JSON object with the bound ids."""
    pre_chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_none,
    ]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )


def logging_config(fmt: str, level: str) -> dict[str, Any]:
    """Django's LOGGING for a format. `text` is exactly the configuration before JSON existed
    (a bare StreamHandler: the message alone), so nothing changes for those who read it."""
    handler: dict[str, Any] = {"class": "logging.StreamHandler"}
    formatters: dict[str, Any] = {}
    if fmt == "json":
        formatters["json"] = {"()": json_formatter}
        handler["formatter"] = "json"
        # structlog's own loggers (if any code uses them) end in the same stdlib handler.
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": formatters,
        "handlers": {"console": handler},
        "root": {"handlers": ["console"], "level": level},
    }


class Binder:
    """What `bound` yields: binds more ids once they are known (a job's run after the job
    row is read), reset with the others when the block ends."""

    def __init__(self) -> None:
        self.tokens: list[dict[str, Any]] = []

    def __call__(self, **ids: Any) -> None:
        ids = {k: v for k, v in ids.items() if v is not None}
        if ids:
            self.tokens.append(dict(structlog.contextvars.bind_contextvars(**ids)))


@contextlib.contextmanager
def bound(**ids: Any) -> Iterator[Binder]:
    """Bind ids (agent_id, job_id, run_id, ...) to every log line written inside the block
    (in JSON output); ids that are None are left out. On exit the previous values come back,
    so nothing leaks into the next request or Celery task run by the same thread. Costs a
    few contextvar sets: cheap enough for the claim and log paths."""
    binder = Binder()
    binder(**ids)
    try:
        yield binder
    finally:
        for tokens in reversed(binder.tokens):
            structlog.contextvars.reset_contextvars(**tokens)
