"""API tokens, pool token rotation, state locks released with their job, audit addresses,
and deleting a workspace that still tracks resources."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from agents_app.models import Agent
from agents_app.services.pool_settings import pool_token_rotate
from tasks_app.dispatch.agent_reports import agent_set_offline
from tasks_app.models import ApiToken, AuditEvent, StateLock, StateVersion
from tasks_app.services.runs import run_create
from tests.agents_app.fakes import FakeAgent
from tests.factories import make_token

pytestmark = pytest.mark.django_db(transaction=True)


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"job:{password}".encode()).decode()


def lock(client: Client, workspace_id: int, password: str, lock_id: str = "lock-1") -> int:
    body = json.dumps({"ID": lock_id, "Operation": "OperationTypePlan", "Who": "terraform"})
    return client.generic("LOCK", f"/api/v1/workspaces/{workspace_id}/state/lock", body,
                          content_type="application/json", HTTP_AUTHORIZATION=basic(password)).status_code


# --- tokens ----------------------------------------------------------------------------------


def test_it_shows_a_token_once_and_lists_it_by_name_with_its_last_use(alice):
    client = Client(HTTP_AUTHORIZATION=f"Token {make_token(alice, 'bootstrap')}")
    created = client.post("/api/v1/tokens/", {"name": "ci"}, content_type="application/json")
    assert created.status_code == 201
    plain = created.json()["token"]
    assert not ApiToken.objects.filter(digest__contains=plain).exists(), "only a digest is stored"

    ci = Client(HTTP_AUTHORIZATION=f"Token {plain}")
    assert ci.get("/api/v1/workspaces/").status_code == 200
    listed = {t["name"]: t for t in client.get("/api/v1/tokens/").json()}
    assert set(listed) == {"bootstrap", "ci"}
    assert "token" not in listed["ci"], "never shown again"
    assert listed["ci"]["last_used_at"] is not None and listed["ci"]["expires_at"] is None

    assert client.delete(f"/api/v1/tokens/{listed['ci']['key']}/").status_code == 204
    assert ci.get("/api/v1/workspaces/").status_code == 401
    assert AuditEvent.objects.filter(action="token.revoke", data__name="ci").exists()


def test_it_refuses_a_token_past_the_expiry_its_user_set(alice):
    client = Client(HTTP_AUTHORIZATION=f"Token {make_token(alice)}")
    soon = (timezone.now() + timedelta(minutes=5)).isoformat()
    plain = client.post("/api/v1/tokens/", {"name": "short", "expires_at": soon},
                        content_type="application/json").json()["token"]
    ApiToken.objects.filter(name="short").update(expiry=timezone.now() - timedelta(seconds=1))
    assert Client(HTTP_AUTHORIZATION=f"Token {plain}").get("/api/v1/workspaces/").status_code == 401
    resp = client.post("/api/v1/tokens/", {"name": "past", "expires_at": "2001-01-01T00:00:00Z"},
                       content_type="application/json")
    assert resp.status_code == 400 and "expires_at" in resp.json()["errors"]


def test_it_creates_and_revokes_tokens_on_the_tokens_page(alice):
    client = Client()
    client.force_login(alice)
    page = client.post("/tokens/", {"name": "laptop"}).content.decode()
    token = ApiToken.objects.get(user=alice, name="laptop")
    assert "Copy it now" in page and token.token_key in page
    client.post(f"/tokens/{token.token_key}/revoke/")
    assert not ApiToken.objects.filter(user=alice, name="laptop").exists()


# --- pool tokens --------------------------------------------------------------------------


def test_it_revokes_the_agents_of_a_rotated_pool_token(setup, client, alice):
    pool, token, _ = setup
    a1 = FakeAgent(client, token, "a1")
    new_token = pool_token_rotate(pool=pool, actor=alice)

    assert a1.post("/agent/v1/claim?wait=0").status_code == 401
    assert a1.post("/agent/v1/heartbeat", {}).status_code == 401
    assert Agent.objects.get(id=a1.id).status == "offline"
    assert a1.register(credential=a1.token).status_code == 401, "the old pool token is dead too"
    assert FakeAgent(client, new_token, "a1").id != a1.id


# --- state locks -----------------------------------------------------------------------------


def test_it_releases_a_jobs_state_lock_when_the_job_ends(setup, client):
    _, token, ws = setup
    a1 = FakeAgent(client, token, "a1")
    run_create(workspace=ws, operation="plan_and_apply", actor="test")
    job = a1.claim()
    assert lock(client, ws.id, job["state_backend"]["password"]) == 200
    assert StateLock.objects.filter(workspace=ws).exists()
    a1.finish(job, "failed", error="terraform was killed")  # a killed terraform never unlocks
    assert not StateLock.objects.filter(workspace=ws).exists()


def test_it_releases_a_jobs_state_lock_when_its_agent_is_declared_dead(setup, client):
    _, token, ws = setup
    a1 = FakeAgent(client, token, "a1")
    run_create(workspace=ws, operation="plan_and_apply", actor="test")
    job = a1.claim()
    assert lock(client, ws.id, job["state_backend"]["password"]) == 200
    agent_set_offline(agent_id=a1.id, reason="test")
    assert not StateLock.objects.filter(workspace=ws).exists()
    assert AuditEvent.objects.filter(action="state.unlock_on_job_end").exists()


# --- audit ---------------------------------------------------------------------------------


def test_it_records_who_did_what_from_which_address(alice, workspace):
    client = Client(HTTP_AUTHORIZATION=f"Token {make_token(alice)}", REMOTE_ADDR="203.0.113.9")
    client.patch(f"/api/v1/workspaces/{workspace.id}/", {"locked": True}, content_type="application/json")
    event = AuditEvent.objects.get(action="workspace.lock")
    assert (event.actor, event.address) == (alice, "203.0.113.9")
    listed = client.get("/api/v1/audit-events/?action=workspace.lock").json()["results"]
    assert [(e["actor"], e["address"], e["object_id"]) for e in listed] == [("alice", "203.0.113.9", str(workspace.id))]


# --- deleting a workspace --------------------------------------------------------------------


def test_it_refuses_to_delete_a_workspace_whose_state_tracks_resources(alice, workspace):
    state = {"version": 4, "serial": 1, "lineage": "l-1", "resources": [
        {"mode": "managed", "type": "terraform_data", "name": "demo", "instances": [{"attributes": {}}]}]}
    from iacplatform import crypto

    data = json.dumps(state).encode()
    StateVersion.objects.create(workspace=workspace, serial=1, lineage="l-1", sha256="x" * 64, size=len(data),
                                encrypted_data=crypto.encrypt(data))
    client = Client(HTTP_AUTHORIZATION=f"Token {make_token(alice)}")
    resp = client.delete(f"/api/v1/workspaces/{workspace.id}/")
    assert resp.status_code == 409 and "still tracks resources" in resp.json()["detail"]
    assert client.delete(f"/api/v1/workspaces/{workspace.id}/?force=true").status_code == 204
