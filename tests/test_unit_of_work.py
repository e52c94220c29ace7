"""The unit of work (iacplatform/unit_of_work.py): history rows go in one statement at the
unit's end, in order; saves of one object merge into one UPDATE; after-commit work runs
before the sends, and a request's sends wait in its outbox until the answer; nothing of a unit
whose block raises is written, run or sent."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from iacplatform import live
from iacplatform.unit_of_work import unit_of_work
from tasks_app.dispatch.dispatch_log import dispatch_event
from tasks_app.dispatch.models import DispatchEvent

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_unit_writes_its_events_in_order_in_one_insert_at_its_end():
    with CaptureQueriesContext(connection) as queries, unit_of_work() as uow:
        for state in ("queued", "running", "succeeded"):
            dispatch_event(uow, subject="job", subject_id=2, to_state=state, message=state)
        assert not DispatchEvent.objects.filter(subject_id=2).exists()  # not yet
    inserts = [q for q in queries.captured_queries if q["sql"].startswith('INSERT INTO "agents_app_dispatchevent"')]
    assert len(inserts) == 1
    rows = list(DispatchEvent.objects.filter(subject_id=2).order_by("id").values_list("to_state", flat=True))
    assert rows == ["queued", "running", "succeeded"]
    assert all(e.created_at is not None for e in DispatchEvent.objects.filter(subject_id=2))


def test_a_unit_that_raises_writes_runs_and_sends_nothing(monkeypatch):
    ran, sent = [], []
    monkeypatch.setattr(live, "send_after", lambda sends, publishes, outbox: sent.append(sends))
    with pytest.raises(RuntimeError), unit_of_work() as uow:
        dispatch_event(uow, subject="job", subject_id=3, to_state="running", message="lost")
        uow.on_commit(lambda: ran.append(1))
        uow.send([("pool-1", {"type": "dispatch.changed"})])
        raise RuntimeError("the transaction fails")
    assert not DispatchEvent.objects.filter(subject_id=3).exists() and ran == [] and sent == []
    with unit_of_work() as uow:  # nothing left behind
        dispatch_event(uow, subject="job", subject_id=3, to_state="queued", message="after")
    assert DispatchEvent.objects.filter(subject_id=3).count() == 1


def test_an_inner_unit_that_raises_leaves_the_outer_one_whole():
    with unit_of_work() as outer:
        dispatch_event(outer, subject="job", subject_id=5, to_state="queued", message="outer")
        with pytest.raises(RuntimeError), unit_of_work() as inner:
            dispatch_event(inner, subject="job", subject_id=5, to_state="running", message="inner")
            raise RuntimeError("the savepoint rolls back")
    assert list(DispatchEvent.objects.filter(subject_id=5).values_list("message", flat=True)) == ["outer"]


def test_a_unit_writes_the_rows_of_all_its_tables_in_one_statement_and_its_run_once(setup):
    from tasks_app.models import AuditEvent, Task, TaskEvent
    from tasks_app.services.audit import audit_record
    from tasks_app.services.runs import run_create, run_transition
    from tasks_app.states import RunStatus

    task = run_create(workspace=setup[2], operation="plan_and_apply", actor="test")
    task = Task.objects.get(id=task.id)  # (the run's own start has moved it on meanwhile)
    Task.objects.filter(id=task.id).update(status=RunStatus.PENDING)
    task.status = RunStatus.PENDING
    with CaptureQueriesContext(connection) as queries, unit_of_work() as uow:
        run_transition(task, RunStatus.PLAN_QUEUED, uow=uow)
        dispatch_event(uow, subject="job", subject_id=4, task=task, to_state="queued", message="a")
        task.log_size = 42
        uow.save(task, "log_size")
        run_transition(task, RunStatus.PLANNING, uow=uow)
        dispatch_event(uow, subject="job", subject_id=4, task=task, to_state="running", message="b")
        audit_record(actor="tester", action="run.test", obj=task, data={"n": 1}, uow=uow)
        assert not AuditEvent.objects.filter(action="run.test").exists()  # not yet
        assert Task.objects.get(id=task.id).status == RunStatus.PENDING  # nor the run's row
    writes = [q["sql"] for q in queries.captured_queries if "INSERT INTO" in q["sql"]]
    assert len(writes) == 1, writes
    for table in ("agents_app_dispatchevent", "tasks_app_taskevent", "tasks_app_auditevent"):
        assert f'INSERT INTO "{table}"' in writes[0]
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith('UPDATE "tasks_app_task"')]
    assert len(updates) == 1, updates  # two moves and a field: one UPDATE of the run
    stored = Task.objects.get(id=task.id)
    assert (stored.status, stored.log_size) == (RunStatus.PLANNING, 42)
    moves = list(TaskEvent.objects.filter(task=task).order_by("id").values_list("to_status", flat=True))
    assert moves[-2:] == ["plan_queued", "planning"]
    assert list(DispatchEvent.objects.filter(subject_id=4).order_by("id").values_list("message", flat=True)) == ["a", "b"]
    audit = AuditEvent.objects.get(action="run.test")
    assert (audit.actor_label, audit.object_id, audit.data) == ("tester", str(task.id), {"n": 1})


def test_flush_writes_now_what_the_unit_holds(setup):
    from tasks_app.models import Task
    from tasks_app.services.runs import run_create

    task = run_create(workspace=setup[2], operation="plan", actor="test")
    with unit_of_work() as uow:
        task.message = "flushed"
        uow.save(task, "message")
        dispatch_event(uow, subject="job", subject_id=6, to_state="queued")
        uow.flush()  # someone is about to read them back
        assert Task.objects.get(id=task.id).message == "flushed"
        assert DispatchEvent.objects.filter(subject_id=6).exists()


def test_after_the_commit_the_work_runs_first_then_the_sends_or_the_request_outbox(monkeypatch):
    order = []
    monkeypatch.setattr(live, "group_send", lambda sends, label: order.append(("send", sends[0][0])))
    monkeypatch.setattr(live.wakeups, "publish", lambda channel, message, label: order.append(("publish", channel)))
    with unit_of_work() as uow:
        uow.send([("pool-1", {"type": "dispatch.changed"})])
        uow.publish("iac:run:1", "status:applied")
        uow.on_commit(lambda: order.append(("work", "push")))
        assert order == []  # nothing before the commit
    assert order == [("work", "push"), ("publish", "iac:run:1"), ("send", "pool-1")]

    # While a request is answered, the sends wait in its outbox (sent after the answer).
    order.clear()
    outbox = live.open_outbox()
    try:
        with unit_of_work() as uow:
            uow.send([("pool-2", {"type": "dispatch.changed"})])
            uow.on_commit(lambda: order.append(("work", "wake")))
    finally:
        live._outbox.reset(outbox.token)
    assert order == [("work", "wake")]
    assert outbox.sends == [("pool-2", {"type": "dispatch.changed"})]
