"""Policy sets through the REST API: what a site admin sends, what is refused (with the
engine's own message) and that a refused set writes nothing; what a run's API shows."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from tasks_app.models import AuditEvent, PolicySet
from tests.factories import grant, make_token

pytestmark = pytest.mark.django_db

GOOD = """package terraform.tags

deny contains msg if {
  some rc in input.plan.resource_changes
  not rc.change.after.tags.owner
  msg := sprintf("%s has no owner tag", [rc.address])
}
"""


def _policy(name: str = "tags", module: str = GOOD, level: str = "soft-mandatory") -> dict:
    return {"name": name, "enforcement_level": level, "module": module}


def test_it_creates_a_policy_set_attached_to_a_workspace_and_audits_it(api, workspace):
    created = api.post("/api/v1/policy-sets/", {"name": "tagging", "workspaces": [workspace.id],
                                                "policies": [_policy()]}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["workspaces"] == [workspace.id] and body["global"] is False
    assert body["policies"] == [{"name": "tags", "enforcement_level": "soft-mandatory", "package": "terraform.tags",
                                 "module": GOOD}]
    assert AuditEvent.objects.filter(action="policy_set.create", object_id=str(body["id"])).exists()
    assert api.get("/api/v1/policy-sets/").json()[0]["name"] == "tagging"


def test_it_refuses_a_module_that_does_not_parse_with_the_engines_message_and_writes_nothing(api, workspace):
    broken = 'package terraform.broken\n\ndeny contains msg if {\n  msg := "x"\n'
    refused = api.post("/api/v1/policy-sets/", {"name": "broken", "workspaces": [workspace.id],
                                                "policies": [_policy(), _policy("broken", broken)]}, format="json")
    assert refused.status_code == 400
    detail = refused.json()["detail"]
    assert "broken does not compile" in detail and "broken.rego:3:" in detail and "unclosed" in detail
    assert not PolicySet.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="policy_set").exists()


@pytest.mark.parametrize(("policy", "words"), [
    (_policy(level="mandatory"), "enforcement_level must be one of advisory, soft-mandatory, hard-mandatory"),
    (_policy(module="deny contains 1 if { true }"), "the module has no `package` line"),
    (_policy(module="package x\n" + "# padding\n" * 30000), "the limit is 262144"),
    (_policy(name="no spaces"), "name must be 1 to 100 letters"),
])
def test_it_refuses_bad_policies_with_a_message_that_says_why(api, policy, words):
    refused = api.post("/api/v1/policy-sets/", {"name": "s", "policies": [policy]}, format="json")
    assert refused.status_code == 400
    assert words in refused.json()["detail"]
    assert not PolicySet.objects.exists()


def test_it_refuses_two_policies_of_one_package_in_a_set(api):
    refused = api.post("/api/v1/policy-sets/", {"name": "s", "policies": [_policy("a"), _policy("b")]}, format="json")
    assert refused.status_code == 400
    assert "package terraform.tags: two policies of the set declare it" in refused.json()["detail"]


def test_a_workspace_admin_can_neither_change_nor_detach_a_set_that_governs_them(api, workspace):
    ps = api.post("/api/v1/policy-sets/", {"name": "tagging", "workspaces": [workspace.id],
                                           "policies": [_policy()]}, format="json").json()
    bob = User.objects.create_user("bob", password="bob-password-1")
    grant(bob, workspace, "admin")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {make_token(bob)}")
    assert client.patch(f"/api/v1/policy-sets/{ps['id']}/", {"workspaces": []}, format="json").status_code == 403
    assert client.delete(f"/api/v1/policy-sets/{ps['id']}/").status_code == 403
    assert PolicySet.objects.get(id=ps["id"]).workspaces.get() == workspace


def test_it_replaces_a_sets_policies_whole_and_keeps_the_old_ones_when_the_new_do_not_compile(api):
    ps = api.post("/api/v1/policy-sets/", {"name": "s", "global": True, "policies": [_policy()]}, format="json").json()
    bad = api.patch(f"/api/v1/policy-sets/{ps['id']}/", {"policies": [_policy("x", "package x\nallow if {")]},
                    format="json")
    assert bad.status_code == 400
    assert [p["name"] for p in api.get(f"/api/v1/policy-sets/{ps['id']}/").json()["policies"]] == ["tags"]
    changed = api.patch(f"/api/v1/policy-sets/{ps['id']}/", {"global": False, "policies": [
        _policy("other", GOOD.replace("terraform.tags", "terraform.other"), "advisory")]}, format="json")
    assert changed.status_code == 200
    assert changed.json()["global"] is False
    assert [(p["name"], p["enforcement_level"]) for p in changed.json()["policies"]] == [("other", "advisory")]
    assert AuditEvent.objects.get(action="policy_set.update").data["before"]["policies"] == [
        {"name": "tags", "enforcement_level": "soft-mandatory"}]
