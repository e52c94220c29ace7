"""Locks taken before holders were recorded: the migration names the user from the audit log's
`state.lock` row, so a person's lock held across the upgrade stays theirs; a lock the log does
not name is nobody's (only a force-unlock releases it)."""

from __future__ import annotations

import base64
import importlib
import json

import pytest
from django.apps import apps
from django.contrib.auth.models import User
from django.test import Client

from tasks_app.models import AuditEvent, StateLock
from tests.factories import grant, make_token

pytestmark = pytest.mark.django_db

migration = importlib.import_module("tasks_app.migrations.0020_statelock_holder_user")


def _unlock(token: str, workspace_id: int, lock_id: str) -> int:
    auth = "Basic " + base64.b64encode(f"tf:{token}".encode()).decode()
    return Client().generic("UNLOCK", f"/api/v1/workspaces/{workspace_id}/state/lock", json.dumps({"ID": lock_id}),
                            content_type="application/json", HTTP_AUTHORIZATION=auth).status_code


def test_it_gives_an_old_lock_the_holder_the_audit_log_names(workspace, alice):
    old = StateLock.objects.create(workspace=workspace, lock_id="before-upgrade", info={"ID": "before-upgrade"})
    AuditEvent.objects.create(actor=alice, action="state.lock", object_type="workspace",
                              object_id=str(workspace.id), data={"id": "before-upgrade"})

    migration.holders_from_audit_log(apps, None)

    old.refresh_from_db()
    assert old.user == alice
    # Hers again: her terraform's UNLOCK is a plain unlock, not a force-unlock.
    assert _unlock(make_token(alice), workspace.id, "before-upgrade") == 200
    assert AuditEvent.objects.filter(action="state.unlock", actor=alice).exists()
    assert not AuditEvent.objects.filter(action="state.force_unlock").exists()


def test_it_leaves_an_old_lock_the_log_does_not_name_to_a_force_unlock(workspace, alice):
    writer = User.objects.create_user("writer", password="pw-writer-1")
    grant(writer, workspace, "write")
    StateLock.objects.create(workspace=workspace, lock_id="unknown-taker", info={"ID": "unknown-taker"})

    migration.holders_from_audit_log(apps, None)

    assert StateLock.objects.get(workspace=workspace).user is None
    assert _unlock(make_token(writer), workspace.id, "unknown-taker") == 409
    assert _unlock(make_token(alice), workspace.id, "unknown-taker") == 200
    assert AuditEvent.objects.get(action="state.force_unlock").data["holder"] == "an unknown holder"
