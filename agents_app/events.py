"""Producers for the live pool views: a dispatch change (job, slot, warmup, agent) is
published after commit on the pool's Redis channel. Best effort: Redis being away costs the
live view an update, never the change itself (PostgreSQL holds the truth)."""

from __future__ import annotations

import json

from django.db import transaction

from iacplatform import wakeups


def pool_events_channel(pool_id: int) -> str:
    return f"iac:events:pool:{pool_id}"


def dispatch_changed(*, pool_id: int | None, subject: str, subject_id: int, state: str, task_id: int | None) -> None:
    """Publish once the current transaction commits (at once outside one)."""
    if pool_id is None:
        return
    message = json.dumps({"subject": subject, "id": subject_id, "state": state, "task": task_id})

    # wakeups.publish never raises (and logs one line per Redis outage).
    transaction.on_commit(lambda: wakeups.publish(pool_events_channel(pool_id), message))
