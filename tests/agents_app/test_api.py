"""Pools and agents in the user REST API: anyone signed in reads, only admins write."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone
from rest_framework.test import APIClient

from agents_app.models import AgentPool, AgentStatus
from agents_app.protocol import SlotState
from agents_app.services.agents import pool_by_token
from tasks_app.models import AuditEvent, Task
from tasks_app.states import Operation, RunStatus
from tests.factories import make_agent, make_token, make_workspace

pytestmark = pytest.mark.django_db


@pytest.fixture
def charlie_api(charlie) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {make_token(charlie)}")
    return client


def test_it_creates_a_pool_and_shows_its_token_once(api, alice):
    response = api.post(
        "/api/v1/pools/",
        {
            "name": "builders", "backend": "static", "min_replicas": 0, "max_replicas": 4,
            "slots_per_pod": 2, "warm_apply": False,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    created = response.json()
    assert created["backend"] == "static" and created["slots_per_pod"] == 2 and created["warm_apply"] is False
    # The token works for agent registration and is stored only as a hash.
    pool = pool_by_token(created["token"])
    assert pool is not None and pool.id == created["id"]
    assert created["token"] not in pool.token_hash

    again = api.get(f"/api/v1/pools/{created['id']}/").json()
    assert "token" not in again and "token_hash" not in again
    assert "token" not in api.get("/api/v1/pools/").json()[0]
    assert AuditEvent.objects.filter(action="pool.create", actor=alice, object_id=str(pool.id)).exists()


def test_it_applies_the_model_defaults_to_a_new_pool(api):
    created = api.post("/api/v1/pools/", {"name": "defaults"}, format="json").json()
    assert (created["backend"], created["min_replicas"], created["max_replicas"], created["slots_per_pod"]) == (
        "local", 1, 10, 3,
    )
    assert created["warm_apply"] is True


def test_it_gives_a_new_pool_the_bounds_of_the_settings(api, settings):
    settings.IAC_PLAN_TIMEOUT_SECONDS = 900
    settings.IAC_APPLY_PENDING_TIMEOUT_SECONDS = 86400
    settings.IAC_SCALE_DOWN_DELAY_SECONDS = 600
    created = api.post("/api/v1/pools/", {"name": "bounded"}, format="json").json()
    assert {k: v for k, v in created.items() if k.endswith("_seconds")} == {
        "plan_timeout_seconds": 900, "apply_timeout_seconds": 7200, "no_agent_timeout_seconds": 1800,
        "apply_pending_timeout_seconds": 86400, "plan_kill_grace_seconds": 30, "apply_kill_grace_seconds": 900,
        # the autoscaler's (the design note's defaults)
        "scale_up_delay_seconds": 30, "scale_down_delay_seconds": 600, "cooldown_seconds": 900,
        "warmup_expire_seconds": 1800, "pod_start_wait_seconds": 60, "pod_register_deadline_seconds": 180,
    }
    assert (created["min_replicas"], created["max_replicas"], created["slots_per_pod"],
            created["warmup_max_retries"]) == (1, 10, 3, 3)
    chosen = api.post("/api/v1/pools/", {"name": "chosen", "plan_timeout_seconds": 60}, format="json").json()
    assert chosen["plan_timeout_seconds"] == 60


def test_it_edits_a_pools_bounds_and_refuses_what_is_not_a_positive_number_of_seconds(api, pool):
    url = f"/api/v1/pools/{pool.id}/"
    response = api.patch(url, {"apply_timeout_seconds": 600, "apply_pending_timeout_seconds": 0}, format="json")
    assert response.status_code == 200, response.json()
    pool.refresh_from_db()
    assert (pool.apply_timeout_seconds, pool.apply_pending_timeout_seconds) == (600, 0)

    for field, value, words in [
        ("plan_timeout_seconds", 0, "must be a positive number of seconds (at least 1)"),
        ("apply_kill_grace_seconds", -5, "must be a positive number of seconds (at least 1)"),
        ("apply_pending_timeout_seconds", -1, "must be 0 (off) or a positive number of seconds"),
        ("no_agent_timeout_seconds", "soon", "A valid integer is required."),
    ]:
        response = api.patch(url, {field: value}, format="json")
        assert response.status_code == 400, (field, value)
        assert response.json()["errors"][field] == [words]
    pool.refresh_from_db()
    assert pool.plan_timeout_seconds == 3600 and pool.apply_kill_grace_seconds == 900


def test_it_names_the_missing_or_invalid_pool_fields(api, pool):
    response = api.post("/api/v1/pools/", {"backend": "mainframe"}, format="json")
    assert response.status_code == 400
    assert {"name", "backend"} <= set(response.json()["errors"])

    response = api.post("/api/v1/pools/", {"name": pool.name}, format="json")
    assert response.status_code == 400 and "name" in response.json()["errors"]

    response = api.post("/api/v1/pools/", {"name": "zero", "slots_per_pod": 0}, format="json")
    assert response.status_code == 400 and "slots_per_pod" in response.json()["errors"]

    response = api.post("/api/v1/pools/", {"name": "neg", "min_replicas": -1}, format="json")
    assert response.status_code == 400 and "min_replicas" in response.json()["errors"]


def test_it_refuses_a_minimum_above_the_maximum(api, pool):
    response = api.post("/api/v1/pools/", {"name": "upside-down", "min_replicas": 5, "max_replicas": 2}, format="json")
    assert response.status_code == 400 and "max_replicas" in response.json()["errors"]
    assert not AgentPool.objects.filter(name="upside-down").exists()

    # A PATCH is checked against the values it does not change (pool: min 1, max 10).
    response = api.patch(f"/api/v1/pools/{pool.id}/", {"min_replicas": 11}, format="json")
    assert response.status_code == 400 and "min_replicas" in response.json()["errors"]


def test_it_refuses_a_malformed_json_body(api):
    response = api.post("/api/v1/pools/", data="{name:", content_type="application/json")
    assert response.status_code == 400
    assert "JSON" in response.json()["detail"]


def test_it_lets_an_admin_change_a_pool(api, pool):
    response = api.patch(f"/api/v1/pools/{pool.id}/", {"max_replicas": 3, "warm_apply": False}, format="json")
    assert response.status_code == 200, response.json()
    pool.refresh_from_db()
    assert pool.max_replicas == 3 and pool.warm_apply is False
    assert AuditEvent.objects.filter(action="pool.update", object_id=str(pool.id)).exists()


def test_it_refuses_a_non_boolean_warm_apply(api, pool):
    response = api.patch(f"/api/v1/pools/{pool.id}/", {"warm_apply": "off"}, format="json")
    assert response.status_code == 400 and "warm_apply" in response.json()["errors"]


def test_it_forbids_a_non_admin_to_create_or_change_a_pool(charlie_api, pool):
    response = charlie_api.post("/api/v1/pools/", {"name": "mine"}, format="json")
    assert response.status_code == 403
    assert "admin" in response.json()["detail"]
    assert not AgentPool.objects.filter(name="mine").exists()

    response = charlie_api.patch(f"/api/v1/pools/{pool.id}/", {"max_replicas": 100}, format="json")
    assert response.status_code == 403
    pool.refresh_from_db()
    assert pool.max_replicas == 10


def test_it_shows_a_non_admin_only_the_pools_their_teams_may_use(charlie_api, charlie, pool):
    assert charlie_api.get("/api/v1/pools/").json() == []
    assert charlie_api.get(f"/api/v1/pools/{pool.id}/").status_code == 404

    team = Group.objects.create(name="builders")
    team.user_set.add(charlie)
    pool.teams.add(team)
    assert [p["name"] for p in charlie_api.get("/api/v1/pools/").json()] == [pool.name]
    assert charlie_api.get(f"/api/v1/pools/{pool.id}/").status_code == 200
    # Agents are the site admins' business.
    assert charlie_api.get(f"/api/v1/pools/{pool.id}/agents/").status_code == 403


@pytest.mark.parametrize("header", [None, "Token bogus"])
def test_it_answers_401_without_a_valid_token(pool, header):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    for response in (client.get("/api/v1/pools/"), client.post("/api/v1/pools/", {"name": "x"}, format="json")):
        assert response.status_code == 401
        assert response.json()["detail"]
    assert client.get(f"/api/v1/pools/{pool.id}/agents/").status_code == 401


def test_it_lists_agents_with_their_slots_and_warm_dirs(api, pool):
    ws = make_workspace(pool=pool, files={"main.tf": "# empty\n"})
    task = Task.objects.create(
        workspace=ws, configuration_version=ws.configuration_versions.first(),
        operation=Operation.PLAN_AND_APPLY, status=RunStatus.APPLY_PENDING,
    )
    gone, _ = make_agent(pool=pool, name="old-agent", slots=1, version="0.9")
    gone.status = AgentStatus.OFFLINE
    gone.save()
    agent, _ = make_agent(pool=pool, name="agent-1", slots=3, version="1.2.0")
    agent.slots.filter(index=1).update(state=SlotState.RESERVED, task=task)
    agent.warm_dirs = [{"task": task.id, "plan_hash": "abc"}]
    agent.last_heartbeat_at = timezone.now()
    agent.save()

    response = api.get(f"/api/v1/pools/{pool.id}/agents/")
    assert response.status_code == 200
    first, second = response.json()
    # Online agents first.
    assert (first["name"], first["status"], first["version"]) == ("agent-1", "online", "1.2.0")
    assert first["slots"] == [
        {"index": 0, "state": "idle", "task": None},
        {"index": 1, "state": "reserved", "task": task.id},
        {"index": 2, "state": "idle", "task": None},
    ]
    assert first["warm_dirs"] == [{"task": task.id, "plan_hash": "abc"}]
    assert first["last_heartbeat_at"] is not None
    assert (second["name"], second["status"]) == ("old-agent", "offline")
    assert "token_hash" not in first


def test_it_answers_404_for_the_agents_of_an_unknown_pool(api, db):
    assert api.get("/api/v1/pools/999999/agents/").status_code == 404
