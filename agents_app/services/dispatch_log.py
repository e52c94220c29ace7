"""The dispatch history's rows (DispatchEvent: job, slot, warmup moves), written at once or,
inside `dispatch_events_batched()`, together in one INSERT at the end of the block.

A hot transaction moves several of them (a claim: the job and its slot; a result: the job,
its slot and the run's warm dir), each move's owner recording its own row: batched, that
is one round trip to the database instead of one per row, in the same transaction and in
the same order."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from agents_app.models import DispatchEvent

_batch: ContextVar[list[DispatchEvent] | None] = ContextVar("dispatch_events_batch", default=None)


def dispatch_event(**fields: Any) -> None:
    """Record one DispatchEvent (the caller's transaction)."""
    batch = _batch.get()
    if batch is None:
        DispatchEvent.objects.create(**fields)
    else:
        batch.append(DispatchEvent(**fields))


@contextmanager
def dispatch_events_batched() -> Iterator[None]:
    """The events recorded in the block are inserted at its end, in order, in one query (use
    inside the transaction that makes them: nothing is written if the block raises)."""
    batch: list[DispatchEvent] = []
    token = _batch.set(batch)
    try:
        yield
    finally:
        _batch.reset(token)
    if batch:
        DispatchEvent.objects.bulk_create(batch)
