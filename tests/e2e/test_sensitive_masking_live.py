"""A platform-sensitive value that the configuration does not declare `sensitive`, through a
real plan and apply by a real agent and terraform: a `read` user finds it in none of the run
(API and page), the outputs and the state versions; a `write` user's terraform-style state
pull and the outputs give the real value."""

from __future__ import annotations

import uuid

import pytest
import requests
from django.contrib.auth.models import User
from django.test import Client

from tasks_app.models import AccessLevel, Workspace
from tests.e2e.apiclient import PlatformUser
from tests.factories import grant, make_token

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

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
  value = { url = terraform_data.db.output, tags = ["app", var.db_password] }
}
"""


def test_a_read_user_never_sees_a_platform_sensitive_value_of_a_real_run(scenario, live_url):
    s = scenario(files={"main.tf": MAIN_TF})
    s.agent("a1")
    secret = f"pw-{uuid.uuid4().hex}"
    ws_id = s.workspace["id"]
    s.user.request("POST", f"/api/v1/workspaces/{ws_id}/variables/", expect=201, json={
        "key": "db_password", "value": secret, "category": "terraform", "sensitive": True})
    run = s.user.queue(ws_id)
    s.user.wait(run["id"], "apply_pending")
    assert s.user.confirm(run["id"]).status_code == 200
    s.user.wait(run["id"], "applied", timeout=90)

    workspace = Workspace.objects.get(id=ws_id)
    carol = User.objects.create_user("carol", password="pw-carol-1")
    bob = User.objects.create_user("bob", password="pw-bob-1")
    grant(carol, workspace, AccessLevel.READ)
    grant(bob, workspace, AccessLevel.WRITE)
    reader = PlatformUser(live_url, make_token(carol))
    page = Client()
    page.force_login(carol)
    seen = {
        "run": reader.request("GET", f"/api/v1/runs/{run['id']}/", expect=200).text,
        "outputs": reader.request("GET", f"/api/v1/workspaces/{ws_id}/outputs/", expect=200).text,
        "state versions": reader.request("GET", f"/api/v1/workspaces/{ws_id}/state-versions/", expect=200).text,
        "run page": page.get(f"/runs/{run['id']}/").content.decode(),
    }
    for where, text in seen.items():
        assert secret not in text, f"the sensitive value shows to a read user in the {where}"
    plan = reader.run(run["id"])["plan_summary"]
    assert plan["add"] == 1 and "postgres://app:***@db:5432/app" in str(plan["resources"])
    outputs = {o["name"]: o["value"] for o in reader.request("GET", f"/api/v1/workspaces/{ws_id}/outputs/").json()}
    assert outputs["password"] == "***"

    # Who may read the raw state gets it as terraform wrote it.
    writer_token = make_token(bob)
    state = requests.get(f"{live_url}/api/v1/workspaces/{ws_id}/state", auth=("bob", writer_token), timeout=30)
    assert state.status_code == 200 and state.json()["outputs"]["password"]["value"] == secret
    writer = PlatformUser(live_url, writer_token)
    outputs = {o["name"]: o["value"] for o in writer.request("GET", f"/api/v1/workspaces/{ws_id}/outputs/").json()}
    assert outputs["password"] == secret and outputs["connection"]["tags"] == ["app", secret]
