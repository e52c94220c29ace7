"""The dispatch history's rows: written at once, or batched into one INSERT at the end of a
hot transaction's block (a claim, a result, a Confirm), in order; none when the block fails."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from agents_app.models import DispatchEvent
from agents_app.services.dispatch_log import dispatch_event, dispatch_events_batched

pytestmark = pytest.mark.django_db


def test_outside_a_batch_each_event_is_written_at_once():
    dispatch_event(subject="job", subject_id=1, to_state="queued", message="one")
    assert DispatchEvent.objects.filter(subject_id=1).count() == 1


def test_a_batch_writes_its_events_in_order_in_one_insert_at_its_end():
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        with dispatch_events_batched():
            for state in ("queued", "running", "succeeded"):
                dispatch_event(subject="job", subject_id=2, to_state=state, message=state)
            assert not DispatchEvent.objects.filter(subject_id=2).exists()  # not yet
    inserts = [q for q in queries.captured_queries if q["sql"].startswith('INSERT INTO "agents_app_dispatchevent"')]
    assert len(inserts) == 1
    rows = list(DispatchEvent.objects.filter(subject_id=2).order_by("id").values_list("to_state", flat=True))
    assert rows == ["queued", "running", "succeeded"]
    assert all(e.created_at is not None for e in DispatchEvent.objects.filter(subject_id=2))


def test_a_batch_that_raises_writes_nothing():
    with pytest.raises(RuntimeError), transaction.atomic(), dispatch_events_batched():
        dispatch_event(subject="job", subject_id=3, to_state="running", message="lost")
        raise RuntimeError("the transaction fails")
    assert not DispatchEvent.objects.filter(subject_id=3).exists()
    dispatch_event(subject="job", subject_id=3, to_state="queued", message="after")  # no batch left behind
    assert DispatchEvent.objects.filter(subject_id=3).count() == 1
