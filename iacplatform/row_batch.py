"""History rows (a run's TaskEvents, the dispatch log's DispatchEvents, audit rows) that hot
transactions write one by one, inserted together: `insert(row)` saves at once, or, inside
`rows_batched()`, at the end of the block, in one statement (an INSERT per table, each a
data-modifying WITH of one query when there are several tables), each table's rows in order.

A claim, a job's result or Confirm moves several things, each move's owner recording its own
row (a result: the job, its slot, the run's warm dir, the run twice); batched, that is one
round trip instead of one per row, in the same transaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.db import connection
from django.db.models import Model
from django.db.models.sql import InsertQuery

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
    """The rows `insert`ed in the block go to the database at its end, in one statement, each
    table's rows in order (use inside the transaction that makes them: nothing is written if
    the block raises). The rows get no primary key back (nobody reads it)."""
    batch: list[Model] = []
    token = _batch.set(batch)
    try:
        yield
    finally:
        _batch.reset(token)
    by_model: dict[type[Model], list[Model]] = {}
    for row in batch:
        by_model.setdefault(type(row), []).append(row)
    if not by_model:
        return
    statements = [_insert_sql(model, rows) for model, rows in by_model.items()]
    if len(statements) == 1:
        sql, params = statements[0]
    else:
        # Data-modifying WITH queries run once and to completion whether or not the main
        # query reads them (PostgreSQL).
        sql = "WITH " + ", ".join(f"_rows_{n} AS ({s})" for n, (s, _) in enumerate(statements)) + " SELECT 1"
        params = [p for _, ps in statements for p in ps]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _insert_sql(model: type[Model], rows: list[Model]) -> tuple[str, list]:
    """The INSERT of `rows` as bulk_create would make it (fields' pre_save included: the
    created_at of each row), without RETURNING."""
    opts = model._meta
    for row in rows:
        row._prepare_related_fields_for_save(operation_name="rows_batched")
    fields = [f for f in opts.concrete_fields if not f.generated and f is not opts.auto_field]
    query = InsertQuery(model)
    query.insert_values(fields, rows)
    [(sql, params)] = query.get_compiler(connection=connection).as_sql()
    return sql, list(params)
