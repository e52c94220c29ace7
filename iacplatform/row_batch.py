"""History rows (a run's TaskEvents, the dispatch log's DispatchEvents) that hot transactions
write one by one, inserted together: `insert(row)` saves at once, or, inside `rows_batched()`,
at the end of the block, in one INSERT per table and in order.

A claim, a job's result or Confirm moves several things, each move's owner recording its own
row (a result: the job, its slot, the run's warm dir, the run twice); batched, that is one
round trip per table instead of one per row, in the same transaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.db.models import Model

_batch: ContextVar[list[Model] | None] = ContextVar("row_batch", default=None)


def insert(row: Model) -> None:
    """Insert `row` (the caller's transaction): now, or at the end of the enclosing batch."""
    batch = _batch.get()
    if batch is None:
        row.save(force_insert=True)
    else:
        batch.append(row)


@contextmanager
def rows_batched() -> Iterator[None]:
    """The rows `insert`ed in the block go to the database at its end, one INSERT per table,
    each table's rows in order (use inside the transaction that makes them: nothing is
    written if the block raises)."""
    batch: list[Model] = []
    token = _batch.set(batch)
    try:
        yield
    finally:
        _batch.reset(token)
    by_model: dict[type[Model], list[Model]] = {}
    for row in batch:
        by_model.setdefault(type(row), []).append(row)
    for model, rows in by_model.items():
        model._default_manager.bulk_create(rows)
