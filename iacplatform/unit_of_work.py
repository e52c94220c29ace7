"""One transaction's work, in the open. A service that receives a unit (`uow`) says in its body
what it leaves to the unit; everything else it does is done at once:

    with unit_of_work() as uow:        # a transaction (a savepoint inside another); flush at its end
        run_transition(task, RunStatus.APPLIED, uow=uow)

- `uow.insert(row)`: a history row (TaskEvent, DispatchEvent, AuditEvent). The unit's rows go
  to the database at `flush`, in one statement (an INSERT per table, as data-modifying WITH
  queries of one query), each table's rows in order; they get no primary key back (nobody
  reads it). A claim, a job's result or Confirm moves several things, each move's owner
  recording its own row: one round trip instead of one per row.
- `uow.save(obj, *fields)`: an UPDATE of these fields of `obj`, merged with the unit's other
  saves of the same object: one UPDATE per object at `flush` (a result writes its run once,
  not once per service that changed it). `obj.save(...)` is a write now.
- `uow.flush()`: the pending saves, then the rows, now: where code is about to read them back
  from the database (Confirm within a plan's result) it calls it, in plain sight.
- `uow.on_commit(fn)`: work after the commit (wake-ups, pushes, starting the queue), in order.
- `uow.send(sends, label)` and `uow.publish(channel, message)`: the live pages' group sends
  and the run and pool event channels' publishes, after the commit and after the `on_commit`
  work. A unit made while a request answers first (`live.request_outbox`: every sync view and
  the agents' claim) hands them to that request's outbox, sent together once the answer is
  out (each send is a hop to the event loop and Redis round trips the answer need not wait
  for); elsewhere (Celery, the sweep) they go out at the commit.

A unit inside another (a savepoint) keeps its own rows and saves, written at its own end: if
its block raises, nothing of it is written, and the outer unit goes on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connection, transaction
from django.db.models import Model
from django.db.models.sql import InsertQuery

from iacplatform import live


class UnitOfWork:
    def __init__(self) -> None:
        self._rows: list[Model] = []
        self._saves: dict[int, tuple[Model, set[str]]] = {}
        self._after: list[Callable[[], Any]] = []
        self._sends: list[tuple[list[tuple[str, dict]], str]] = []
        self._publishes: list[tuple[str, str | bytes, str]] = []
        self._outbox = live.request_outbox()

    def insert(self, row: Model) -> None:
        self._rows.append(row)

    def save(self, obj: Model, *fields: str) -> None:
        """`fields` as attribute names (`job_id`, not `job`)."""
        pending = self._saves.setdefault(id(obj), (obj, set()))[1]
        pending.update(fields)

    def on_commit(self, fn: Callable[[], Any]) -> None:
        self._after.append(fn)

    def send(self, sends: list[tuple[str, dict]], label: str = "a live update") -> None:
        """Group sends after the commit; `label` names them in a Redis outage's warning."""
        self._sends.append((sends, label))

    def publish(self, channel: str, message: str | bytes, label: str = "a publish") -> None:
        self._publishes.append((channel, message, label))

    def flush(self) -> None:
        saves, self._saves = list(self._saves.values()), {}
        for obj, fields in saves:
            if fields:
                obj.save(update_fields=sorted(fields))
        rows, self._rows = self._rows, []
        _insert_all(rows)

    def _commit_hook(self) -> None:
        """Registered with the transaction at the unit's end: its after-commit work, in order."""
        after, sends, publishes = self._after, self._sends, self._publishes
        self._after, self._sends, self._publishes = [], [], []
        if not (after or sends or publishes):
            return
        outbox = self._outbox

        def run() -> None:
            for fn in after:
                fn()
            live.send_after(sends, publishes, outbox)

        transaction.on_commit(run)


@contextmanager
def unit_of_work() -> Iterator[UnitOfWork]:
    """A transaction (a savepoint inside another) and its unit: flushed at the end of the
    block; nothing of it is written, run or sent if the block raises."""
    uow = UnitOfWork()
    with transaction.atomic():
        yield uow
        uow.flush()
        uow._commit_hook()


def _insert_all(rows: list[Model]) -> None:
    by_model: dict[type[Model], list[Model]] = {}
    for row in rows:
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
        row._prepare_related_fields_for_save(operation_name="unit_of_work")
    fields = [f for f in opts.concrete_fields if not f.generated and f is not opts.auto_field]
    query = InsertQuery(model)
    query.insert_values(fields, rows)
    [(sql, params)] = query.get_compiler(connection=connection).as_sql()
    return sql, list(params)
