"""The admin's force-unlock (deleting a StateLock row) goes through the state service: the
lock is released and the audit record names its holder, as the backend's force-unlock does."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tasks_app.models import AuditEvent, StateLock
from tasks_app.services.state import state_lock

pytestmark = pytest.mark.django_db


def test_deleting_a_lock_in_the_admin_is_an_audited_force_unlock_naming_its_holder(alice, workspace):
    bob = User.objects.create_user("bob", password="bob-password-1")
    lock = state_lock(workspace=workspace, info={"ID": "lock-of-bob", "Operation": "OperationTypeApply"}, actor=bob)
    client = Client()
    client.force_login(alice)
    resp = client.post(f"/admin/tasks_app/statelock/{lock.id}/delete/", {"post": "yes"})
    assert resp.status_code == 302
    assert not StateLock.objects.filter(workspace=workspace).exists()
    event = AuditEvent.objects.filter(action="state.force_unlock").get()
    assert event.actor_id == alice.id
    assert event.data["holder"] == "user 'bob'" and event.data["id"] == "lock-of-bob"
