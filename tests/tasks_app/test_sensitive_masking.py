"""A value marked sensitive on the platform is masked by value wherever a reader sees it,
whatever the configuration declares: the configuration here uses a sensitive terraform
variable and a sensitive env variable without `sensitive = true` (an output of each, a
resource attribute holding one), so terraform shows them in clear in its plan and outputs.

A run goes the way an agent takes it: the plan's summary is what the agent builds from
`terraform show -json` (agents_app.agent.jobs.plan_summary) and uploads, the apply writes
its state through the state backend with the job's credential. Then a `read` user reads
the run (API and page), the outputs and the state versions: the values never show. A
`write` user, who may read the raw state, gets the real values from the state backend and
the outputs."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from agents_app.agent.jobs import plan_summary
from tasks_app.models import AccessLevel, Variable
from tests.agents_app.fakes import FakeAgent
from tests.factories import grant, make_pool, make_token, make_workspace

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "hunter2-Pa55w0rd"
ENV_SECRET = "AKIA-env-s3cret-77"
NEW_SECRET = "rotated-Pa55w0rd-2"

MAIN_TF = """
variable "db_password" {
  type = string
}

resource "terraform_data" "db" {
  input = "postgres://app:${var.db_password}@db:5432/app"
}

output "password" {
  value = var.db_password
}

output "connection" {
  value = { url = terraform_data.db.output, port = 5432, tags = ["app", var.db_password] }
}
"""


def _show_json(secret: str) -> dict:
    """What `terraform show -json` prints for the plan of MAIN_TF (nothing marked sensitive:
    the configuration declares nothing sensitive)."""
    url = f"postgres://app:{secret}@db:5432/app"
    return {
        "resource_changes": [{
            "address": "terraform_data.db", "mode": "managed", "type": "terraform_data", "name": "db",
            "change": {"actions": ["create"], "before": None,
                       "after": {"input": url, "triggers_replace": None},
                       "after_unknown": {"id": True, "output": True},
                       "before_sensitive": False, "after_sensitive": {}},
        }],
        "output_changes": {"password": {"actions": ["create"]}, "connection": {"actions": ["create"]}},
    }


def _state(secret: str, serial: int) -> dict:
    """The state terraform writes after applying MAIN_TF."""
    url = f"postgres://app:{secret}@db:5432/app"
    return {
        "version": 4, "terraform_version": "1.11.4", "serial": serial, "lineage": "3f1c-lineage",
        "outputs": {
            "password": {"value": secret, "type": "string"},
            "connection": {"value": {"url": url, "port": 5432, "tags": ["app", secret]},
                           "type": ["object", {"url": "string", "port": "number", "tags": ["tuple", ["string", "string"]]}]},
        },
        "resources": [{
            "mode": "managed", "type": "terraform_data", "name": "db",
            "provider": 'provider["terraform.io/builtin/terraform"]',
            "instances": [{"schema_version": 0, "attributes": {"id": "7b1e", "input": url, "output": url,
                                                                "triggers_replace": None},
                           "sensitive_attributes": []}],
        }],
    }


def _basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"x:{password}".encode()).decode()


@pytest.fixture
def world(client):
    admin = User.objects.create_user("alice", password="pw-alice-1", is_staff=True, is_superuser=True)
    writer = User.objects.create_user("bob", password="pw-bob-1")
    reader = User.objects.create_user("carol", password="pw-carol-1")
    pool, pool_token = make_pool()
    ws = make_workspace(pool=pool, files={"main.tf": MAIN_TF})
    grant(writer, ws, AccessLevel.WRITE)
    grant(reader, ws, AccessLevel.READ)
    apis = {}
    for user in (admin, writer, reader):
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Token {make_token(user)}")
        apis[user.username] = api
    # The platform marks both sensitive; the configuration does not.
    for category, key, value in (("terraform", "db_password", SECRET), ("env", "SERVICE_TOKEN", ENV_SECRET)):
        resp = apis["alice"].post(f"/api/v1/workspaces/{ws.id}/variables/",
                                  {"key": key, "value": value, "category": category, "sensitive": True}, format="json")
        assert resp.status_code == 201, resp.content
    agent = FakeAgent(client, pool_token, "a1")
    return {"ws": ws, "api": apis, "agent": agent, "client": client, "users": (admin, writer, reader)}


def _applied_run(world) -> int:
    """A plan_and_apply run, planned and applied the way the agent does it; its id."""
    ws, api, agent, client = world["ws"], world["api"], world["agent"], world["client"]
    resp = api["alice"].post(f"/api/v1/workspaces/{ws.id}/runs/", {"operation": "plan_and_apply"}, format="json")
    assert resp.status_code == 201, resp.content
    run_id = resp.json()["id"]
    job = agent.claim()
    assert sorted(job["sensitive_values"]) == sorted([SECRET, ENV_SECRET])
    summary = plan_summary(_show_json(SECRET))
    # The configuration's output shows the env value too (e.g. echoed by a data source).
    summary["resources"][0]["diff"].append({"name": "note", "before": "", "after": json.dumps(f"token {ENV_SECRET}")})
    assert SECRET in json.dumps(summary), "terraform shows the value: nothing marks it sensitive"
    plan = b"PK-plan-bytes"
    resp = agent.post(f"/agent/v1/jobs/{job['id']}/plan", {
        "plan_b64": base64.b64encode(plan).decode(), "sha256": hashlib.sha256(plan).hexdigest(),
        "summary": summary, "has_changes": True}, fence=job["fence"])
    assert resp.status_code == 201, resp.content
    assert agent.finish(job, kept_dir=True).status_code == 200
    resp = api["alice"].post(f"/api/v1/runs/{run_id}/confirm/", {"comment": ""}, format="json")
    assert resp.status_code == 200, resp.content
    apply = agent.claim()
    assert apply is not None and apply["kind"] == "apply"
    state = json.dumps(_state(SECRET, 1))
    resp = client.post(f"/api/v1/workspaces/{ws.id}/state", state, content_type="application/json",
                       HTTP_AUTHORIZATION=_basic(apply["state_backend"]["password"]))
    assert resp.status_code in (200, 201, 204), resp.content
    assert agent.finish(apply).status_code == 200
    assert api["alice"].get(f"/api/v1/runs/{run_id}/").json()["status"] == "applied"
    return run_id


def _reader_sees(world, run_id: int) -> dict[str, str]:
    ws, api = world["ws"], world["api"]["carol"]
    page = Client()
    page.force_login(world["users"][2])
    seen = {
        "run (API)": api.get(f"/api/v1/runs/{run_id}/"),
        "runs (API)": api.get(f"/api/v1/workspaces/{ws.id}/runs/"),
        "outputs (API)": api.get(f"/api/v1/workspaces/{ws.id}/outputs/"),
        "state versions (API)": api.get(f"/api/v1/workspaces/{ws.id}/state-versions/"),
        "run page": page.get(f"/runs/{run_id}/"),
        "workspace page": page.get(f"/workspaces/{ws.id}/"),
    }
    for where, resp in seen.items():
        assert resp.status_code == 200, (where, resp.status_code)
    return {where: resp.content.decode() for where, resp in seen.items()}


def test_it_never_shows_a_platform_sensitive_value_to_a_read_user(world):
    run_id = _applied_run(world)
    for where, text in _reader_sees(world, run_id).items():
        for value in (SECRET, ENV_SECRET, SECRET.replace("-", "\\u002d")):
            assert value not in text, f"a sensitive value shows in the {where}"

    api = world["api"]["carol"]
    # Masked, not dropped: the reader still sees what changes and which outputs there are.
    diff = api.get(f"/api/v1/runs/{run_id}/").json()["plan_summary"]
    assert diff["add"] == 1
    rows = {row["name"]: row for row in diff["resources"][0]["diff"]}
    assert rows["input"]["after"] == '"postgres://app:***@db:5432/app"'
    assert rows["note"]["after"] == '"token ***"'
    outputs = {o["name"]: o for o in api.get(f"/api/v1/workspaces/{world['ws'].id}/outputs/").json()}
    assert outputs["password"]["value"] == "***"
    assert outputs["connection"]["value"] == {"url": "postgres://app:***@db:5432/app", "port": 5432,
                                              "tags": ["app", "***"]}
    page = Client()
    page.force_login(world["users"][2])
    assert "postgres://app:***@db:5432/app" in page.get(f"/runs/{run_id}/").content.decode()


def test_it_gives_the_real_values_to_who_may_read_the_raw_state(world):
    _applied_run(world)
    ws, api, client = world["ws"], world["api"]["bob"], world["client"]
    raw = client.get(f"/api/v1/workspaces/{ws.id}/state", HTTP_AUTHORIZATION=_basic(make_token(world["users"][1])))
    assert raw.status_code == 200
    assert raw.json()["outputs"]["password"]["value"] == SECRET
    outputs = {o["name"]: o for o in api.get(f"/api/v1/workspaces/{ws.id}/outputs/").json()}
    assert outputs["password"]["value"] == SECRET
    assert outputs["connection"]["value"]["tags"] == ["app", SECRET]
    # The same outputs, asked by the reader at the same moment: masked.
    read = {o["name"]: o for o in world["api"]["carol"].get(f"/api/v1/workspaces/{ws.id}/outputs/").json()}
    assert read["password"]["value"] == "***"
    # The reader's own try at the raw state: refused.
    reader_token = make_token(world["users"][2])
    assert client.get(f"/api/v1/workspaces/{ws.id}/state", HTTP_AUTHORIZATION=_basic(reader_token)).status_code == 403


def test_it_keeps_masking_a_value_changed_since_the_run_used_it(world):
    run_id = _applied_run(world)
    ws, admin = world["ws"], world["api"]["alice"]
    variable = Variable.objects.get(workspace=ws, key="db_password")
    resp = admin.patch(f"/api/v1/variables/{variable.id}/", {"value": NEW_SECRET}, format="json")
    assert resp.status_code == 200, resp.content
    # The run's plan and the state still hold the old value, which the workspace no longer has.
    for where, text in _reader_sees(world, run_id).items():
        assert SECRET not in text, f"the value the run used shows in the {where} once changed"
    outputs = {o["name"]: o["value"] for o in world["api"]["carol"].get(f"/api/v1/workspaces/{ws.id}/outputs/").json()}
    assert outputs == {"connection": "***", "password": "***"}, "what the state holds can no longer be told apart"
    assert {o["name"]: o["value"] for o in world["api"]["bob"].get(f"/api/v1/workspaces/{ws.id}/outputs/").json()}[
        "password"] == SECRET
