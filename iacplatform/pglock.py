"""A PostgreSQL advisory lock taken without waiting: one runner of a periodic job across
processes and replicas (the control loop's sweep, the autoscaler's tick)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection


@contextmanager
def try_advisory_lock(key: int) -> Iterator[bool]:
    """Yields whether this session got the lock (someone else holds it: False, at once);
    releases it on the way out."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", [key])
        got = bool(cur.fetchone()[0])
    try:
        yield got
    finally:
        if got:
            with connection.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", [key])
