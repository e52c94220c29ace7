"""Producers for the live pool views: a dispatch change (job, slot, warmup, agent, pod) is
published after commit on the pool's Redis channel and to the Channels groups of the live
pages (`pool-<id>`, and `run-<task>` when a run is concerned; group names in
iacplatform/live.py). Best effort: Redis being away costs the live view an update, never the
change itself (PostgreSQL holds the truth)."""

from __future__ import annotations

import json

from iacplatform import live
from iacplatform.unit_of_work import UnitOfWork


def pool_events_channel(pool_id: int) -> str:
    return f"iac:events:pool:{pool_id}"


def dispatch_changed(uow: UnitOfWork, *, pool_id: int | None, subject: str, subject_id: int, state: str,
                     task_id: int | None) -> None:
    """Published by the unit after its commit (wakeups.publish and group_send never raise, and
    log one line per Redis outage)."""
    if pool_id is None:
        return
    payload = {"subject": subject, "id": subject_id, "state": state, "task": task_id}
    message = json.dumps(payload)
    event = {"type": "dispatch.changed", "pool_id": pool_id, **payload}
    sends = [(live.pool_group(pool_id), event)]
    if task_id is not None:
        sends.append((live.run_group(task_id), event))
    uow.publish(pool_events_channel(pool_id), message, "a live pool update")
    uow.send(sends, "a live pool update")
