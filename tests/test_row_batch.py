"""History rows (DispatchEvents, a run's TaskEvents, audit rows): written at once, or batched
into one statement at the end of a hot transaction's block (a claim, a result, a Confirm), in
order; none when the block fails."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from iacplatform.row_batch import rows_batched
from tasks_app.dispatch.dispatch_log import dispatch_event
from tasks_app.dispatch.models import DispatchEvent

pytestmark = pytest.mark.django_db


def test_outside_a_batch_each_event_is_written_at_once():
    dispatch_event(subject="job", subject_id=1, to_state="queued", message="one")
    assert DispatchEvent.objects.filter(subject_id=1).count() == 1


def test_a_batch_writes_its_events_in_order_in_one_insert_at_its_end():
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        with rows_batched():
            for state in ("queued", "running", "succeeded"):
                dispatch_event(subject="job", subject_id=2, to_state=state, message=state)
            assert not DispatchEvent.objects.filter(subject_id=2).exists()  # not yet
    inserts = [q for q in queries.captured_queries if q["sql"].startswith('INSERT INTO "agents_app_dispatchevent"')]
    assert len(inserts) == 1
    rows = list(DispatchEvent.objects.filter(subject_id=2).order_by("id").values_list("to_state", flat=True))
    assert rows == ["queued", "running", "succeeded"]
    assert all(e.created_at is not None for e in DispatchEvent.objects.filter(subject_id=2))


def test_a_batch_that_raises_writes_nothing():
    with pytest.raises(RuntimeError), transaction.atomic(), rows_batched():
        dispatch_event(subject="job", subject_id=3, to_state="running", message="lost")
        raise RuntimeError("the transaction fails")
    assert not DispatchEvent.objects.filter(subject_id=3).exists()
    dispatch_event(subject="job", subject_id=3, to_state="queued", message="after")  # no batch left behind
    assert DispatchEvent.objects.filter(subject_id=3).count() == 1


def test_a_batch_writes_the_rows_of_all_its_tables_in_one_statement(setup):
    from tasks_app.models import AuditEvent, TaskEvent
    from tasks_app.services.audit import audit_record
    from tasks_app.services.runs import run_create, run_transition
    from tasks_app.states import RunStatus

    task = run_create(workspace=setup[2], operation="plan_and_apply", actor="test")
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        with rows_batched():
            run_transition(task, RunStatus.PLAN_QUEUED)
            dispatch_event(subject="job", subject_id=4, task=task, to_state="queued", message="a")
            run_transition(task, RunStatus.PLANNING)
            dispatch_event(subject="job", subject_id=4, task=task, to_state="running", message="b")
            audit_record(actor="tester", action="run.test", obj=task, data={"n": 1})
            assert not AuditEvent.objects.filter(action="run.test").exists()  # not yet
    writes = [q["sql"] for q in queries.captured_queries if "INSERT INTO" in q["sql"]]
    assert len(writes) == 1, writes
    for table in ("agents_app_dispatchevent", "tasks_app_taskevent", "tasks_app_auditevent"):
        assert f'INSERT INTO "{table}"' in writes[0]
    moves = list(TaskEvent.objects.filter(task=task).order_by("id").values_list("to_status", flat=True))
    assert moves == ["pending", "plan_queued", "planning"]
    assert list(DispatchEvent.objects.filter(subject_id=4).order_by("id").values_list("message", flat=True)) == ["a", "b"]
    audit = AuditEvent.objects.get(action="run.test")
    assert (audit.actor_label, audit.object_id, audit.data) == ("tester", str(task.id), {"n": 1})
    assert audit.created_at is not None
