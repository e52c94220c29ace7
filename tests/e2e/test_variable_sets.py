"""Variable sets through real runs: a global set and a workspace variable of the same name (the
workspace's wins, until the set is made a priority set), each run saying where every value
came from; a set's sensitive value reaches terraform and never its log."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client

from tasks_app.models import AuditEvent

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MAIN_TF = """
variable "greeting" {
  type = string
}

variable "api_token" {
  type = string
}

resource "terraform_data" "demo" {
  input = var.greeting

  provisioner "local-exec" {
    command = "echo token=${var.api_token} length=${length(var.api_token)}"
  }
}
"""


def _sources(run: dict) -> dict[str, dict]:
    return {v["key"]: v for v in run["variables"]}


def test_it_resolves_a_global_set_against_the_workspace_and_masks_its_secret(scenario, alice):
    s = scenario(files={"main.tf": MAIN_TF})
    s.agent("a1")
    ws_id = s.workspace["id"]
    user = s.user
    secret = f"tok-{uuid.uuid4().hex}"
    name = f"shared-{uuid.uuid4().hex[:6]}"
    vs = user.request("POST", "/api/v1/variable-sets/", expect=201,
                      json={"name": name, "scope": "global", "description": "everyone's"}).json()
    for key, value, sensitive in (("greeting", "from-set", False), ("api_token", secret, True)):
        user.request("POST", f"/api/v1/variable-sets/{vs['id']}/variables/", expect=201,
                     json={"key": key, "value": value, "category": "terraform", "sensitive": sensitive})
    user.request("POST", f"/api/v1/workspaces/{ws_id}/variables/", expect=201,
                 json={"key": "greeting", "value": "from-workspace", "category": "terraform"})

    # Workspace variables win over a non-priority set; the set gives what the workspace lacks.
    run = user.queue(ws_id)
    run = user.wait(run["id"], "apply_pending")
    sources = _sources(run)
    assert sources["greeting"]["source"] == "workspace"
    assert sources["api_token"] == {**sources["api_token"], "source": "variable_set", "variable_set": name,
                                    "scope": "global", "sensitive": True}
    assert secret not in str(run)
    assert "from-workspace" in str(run["plan_summary"]["resources"])
    page = Client()
    page.force_login(alice)
    html = page.get(f"/runs/{run['id']}/").content.decode()
    assert f"variable set <strong>{name}</strong> (global)" in html

    assert user.confirm(run["id"]).status_code == 200
    user.wait(run["id"], "applied", timeout=90)
    log = user.log(run["id"])
    # terraform ran with the set's secret (its length is printed), and the log never shows it.
    assert f"length={len(secret)}" in log
    assert secret not in log and "token=***" in log

    # A priority set wins over the workspace's own variable.
    user.request("PATCH", f"/api/v1/variable-sets/{vs['id']}/", expect=200, json={"priority": True})
    plan = user.queue(ws_id, "plan")
    plan = user.wait(plan["id"], "planned")
    assert _sources(plan)["greeting"] == {**_sources(plan)["greeting"], "source": "variable_set",
                                          "variable_set": name, "priority": True}
    assert "from-set" in str(plan["plan_summary"]["resources"])
    # The set reads back write-only, and every change was audited without a value.
    listed = user.request("GET", f"/api/v1/variable-sets/{vs['id']}/variables/", expect=200).json()
    assert {v["key"]: v["value"] for v in listed} == {"greeting": "from-set", "api_token": None}
    actions = set(AuditEvent.objects.filter(object_type="variableset").values_list("action", flat=True))
    assert {"variable_set.create", "variable_set.variable_create", "variable_set.update"} <= actions
    assert secret not in str(list(AuditEvent.objects.values_list("data", flat=True)))
