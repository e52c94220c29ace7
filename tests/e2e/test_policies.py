"""Policies end to end: policy sets through the REST API, real agents planning real
configurations, the plan's JSON checked by regorus in the worker's warm evaluator, and the
Confirm gate: advisory failures reported, soft-mandatory ones waiting for an admin's audited
override, hard-mandatory ones erroring the run."""

from __future__ import annotations

import pytest
import requests
from django.contrib.auth.models import User
from django.test import Client

from tasks_app.models import AuditEvent, Plan, Workspace
from tests.e2e.apiclient import PlatformUser
from tests.e2e.test_notifications import SECRET, receivers  # noqa: F401  (a fixture)
from tests.factories import grant, make_token
from tests.live import METRICS_TOKEN, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Denies what the demo configuration plans: the creation of a terraform_data resource.
DENY_TERRAFORM_DATA = """package terraform.no_terraform_data

deny contains msg if {
  some rc in input.plan.resource_changes
  rc.type == "terraform_data"
  "create" in rc.change.actions
  msg := sprintf("%s: terraform_data is not allowed in workspace %s", [rc.address, input.workspace.name])
}

warn contains "read the plan before you confirm it" if { true }
"""

# Passes: nothing in the demo configuration is an aws_instance.
ALLOW_ALL = """package terraform.instances

deny contains msg if {
  some rc in input.plan.resource_changes
  rc.type == "aws_instance"
  msg := rc.address
}
"""

# Builds a list of a hundred million numbers: past the evaluator's memory bound in a second.
EXPLODING = """package terraform.explodes

deny contains "too many" if {
  count([x | some x in numbers.range(1, 100000000)]) > 10
}
"""


def _policy_set(user: PlatformUser, workspace_id: int, *policies: tuple[str, str, str], name: str = "guard") -> dict:
    return user.request("POST", "/api/v1/policy-sets/", expect=201, json={
        "name": name, "workspaces": [workspace_id],
        "policies": [{"name": n, "enforcement_level": level, "module": module} for n, level, module in policies],
    }).json()


def _results(run: dict) -> dict[str, dict]:
    return {r["policy"]: r for r in run["policy_check"]["results"]}


def test_it_reports_an_advisory_failure_and_lets_the_run_be_confirmed(scenario):
    s = scenario()
    s.agent("a1")
    _policy_set(s.user, s.workspace["id"], ("no-data", "advisory", DENY_TERRAFORM_DATA),
                ("instances", "hard-mandatory", ALLOW_ALL))
    run = s.user.queue(s.workspace["id"])

    pending = s.user.wait(run["id"], "apply_pending")
    assert pending["policy_status"] == "passed"
    results = _results(pending)
    assert results["no-data"]["passed"] is False
    assert results["no-data"]["deny"] == [
        f"terraform_data.demo: terraform_data is not allowed in workspace {s.workspace['name']}"]
    assert results["no-data"]["warn"] == ["read the plan before you confirm it"]
    assert results["instances"]["passed"] is True
    # The plan's JSON reached the server with the plan, encrypted at rest.
    stored = Plan.objects.get(task_id=run["id"]).encrypted_json
    assert stored and b"terraform_data" not in bytes(stored)

    assert s.user.confirm(run["id"]).status_code == 200
    s.user.wait(run["id"], "applied")
    assert s.applies() == 1


def test_it_blocks_confirm_on_a_soft_failure_until_an_admin_overrides_it(scenario, live_url):
    s = scenario()
    s.agent("a1")
    _policy_set(s.user, s.workspace["id"], ("no-data", "soft-mandatory", DENY_TERRAFORM_DATA))
    ws = Workspace.objects.get(id=s.workspace["id"])
    bob = User.objects.create_user("bob", password="bob-password-1")
    grant(bob, ws, "write")
    dave = User.objects.create_user("dave", password="dave-password-1")
    grant(dave, ws, "admin")
    writer, admin = PlatformUser(live_url, make_token(bob)), PlatformUser(live_url, make_token(dave))
    run = s.user.queue(s.workspace["id"])

    pending = s.user.wait(run["id"], "apply_pending", warmup="ready")
    assert pending["policy_status"] == "soft_failed"
    assert "soft-mandatory policy failed" in pending["waiting_reason"]
    # The run page: the policy section, and a Confirm dialog that says why it is blocked and
    # offers the override to the admin only.
    as_dave, as_bob = Client(), Client()
    as_dave.force_login(dave)
    as_bob.force_login(bob)
    admin_page, writer_page = as_dave.get(f"/runs/{run['id']}/").content.decode(), as_bob.get(
        f"/runs/{run['id']}/").content.decode()
    for page in (admin_page, writer_page):
        assert 'id="run-policies"' in page and "terraform_data.demo: terraform_data is not allowed" in page
        assert "Confirm is blocked" in page and "Confirm Apply</button>" not in page
    assert "Override policy</button>" in admin_page
    assert "Override policy</button>" not in writer_page and "Only an admin of this workspace" not in writer_page
    assert "Only an admin of the workspace can override it." in writer_page
    refused = writer.confirm(run["id"])
    assert refused.status_code == 409
    assert "overrides the policy check" in refused.json()["detail"]
    assert writer.request("POST", f"/api/v1/runs/{run['id']}/override/", json={"reason": "mine"}).status_code == 403
    metrics = requests.get(f"{live_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30)
    assert 'iac_policy_checks{status="soft_failed"} 1.0' in metrics.text
    assert admin.request("POST", f"/api/v1/runs/{run['id']}/override/", json={}).status_code == 400
    assert s.applies() == 0

    # Overridden from the run page's Confirm dialog (htmx), by the workspace's admin.
    answer = as_dave.post(f"/runs/{run['id']}/override/", {"reason": "a demo resource, agreed with the team"},
                          HTTP_HX_REQUEST="true")
    assert answer.status_code == 200 and "Policy check overridden" in answer.content.decode()
    assert "Confirm Apply</button>" in answer.content.decode()
    overridden = admin.run(run["id"])
    assert overridden["policy_status"] == "overridden"
    assert overridden["policy_check"]["overridden_by"] == "dave"
    assert overridden["policy_check"]["override_reason"] == "a demo resource, agreed with the team"
    audit = AuditEvent.objects.get(action="run.policy_override", object_id=str(run["id"]))
    assert audit.actor_label == "dave" and audit.data["reason"] == "a demo resource, agreed with the team"

    assert writer.confirm(run["id"]).status_code == 200
    done = s.user.wait(run["id"], "applied")
    assert done["apply_path"] == "fast", done["apply_path_reason"]  # the warm dir was kept meanwhile
    assert s.applies() == 1


def test_it_errors_a_run_that_fails_a_hard_mandatory_policy_and_notifies(scenario, receivers):  # noqa: F811
    s = scenario()
    s.agent("a1")
    receiver = receivers()
    s.user.request("POST", f"/api/v1/workspaces/{s.workspace['id']}/notification-destinations/", expect=201, json={
        "name": "ops", "kind": "webhook", "url": receiver.url, "secret": SECRET,
        "triggers": ["policy_failed", "errored"]})
    _policy_set(s.user, s.workspace["id"], ("no-data", "hard-mandatory", DENY_TERRAFORM_DATA))
    run = s.user.queue(s.workspace["id"])

    errored = s.user.wait(run["id"], "errored")
    assert errored["policy_status"] == "hard_failed"
    assert errored["message"].startswith("a hard-mandatory policy failed: guard/no-data: terraform_data.demo")
    assert s.user.confirm(run["id"]).status_code == 409
    assert s.applies() == 0
    # The destination hears of the failed check, with what failed, then of the errored run.
    wait_for(lambda: len(receiver.received) >= 2, 20, "the policy_failed and errored notifications")
    assert receiver.events() == ["policy_failed", "errored"] and receiver.bad_signatures == 0
    failed = receiver.received[0]["body"]
    assert failed["run"] == run["id"] and failed["policy_level"] == "hard"
    assert failed["policy_failures"][0].startswith("guard/no-data: terraform_data.demo: terraform_data is not allowed")


def test_it_stops_an_exploding_policy_with_its_reason_and_keeps_checking(scenario):
    s = scenario()
    s.agent("a1")
    _policy_set(s.user, s.workspace["id"], ("explodes", "soft-mandatory", EXPLODING),
                ("instances", "soft-mandatory", ALLOW_ALL))
    run = s.user.queue(s.workspace["id"], "plan")

    planned = s.user.wait(run["id"], "planned", timeout=120)
    results = _results(planned)
    assert results["explodes"]["passed"] is False
    assert "memory bound" in results["explodes"]["error"] or "time bound" in results["explodes"]["error"]
    assert "the evaluator was replaced" in results["explodes"]["error"]
    assert results["instances"]["passed"] is True  # checked on its own, by the replacement
    assert planned["policy_status"] == "soft_failed"

    # The next run's check finds a working evaluator.
    s.user.request("PATCH", f"/api/v1/policy-sets/{planned_set_id(s)}/", expect=200, json={
        "policies": [{"name": "instances", "enforcement_level": "soft-mandatory", "module": ALLOW_ALL}]})
    second = s.user.queue(s.workspace["id"], "plan")
    assert s.user.wait(second["id"], "planned")["policy_status"] == "passed"


def planned_set_id(s) -> int:
    return s.user.request("GET", "/api/v1/policy-sets/", expect=200).json()[0]["id"]


def test_it_holds_an_auto_apply_run_with_a_soft_failure_for_the_override(scenario):
    s = scenario()
    s.agent("a1")
    s.user.request("PATCH", f"/api/v1/workspaces/{s.workspace['id']}/", json={"auto_apply": True}, expect=200)
    _policy_set(s.user, s.workspace["id"], ("no-data", "soft-mandatory", DENY_TERRAFORM_DATA))
    run = s.user.queue(s.workspace["id"])

    pending = s.user.wait(run["id"], "apply_pending")
    assert pending["policy_status"] == "soft_failed"
    assert s.user.run(run["id"])["status"] == "apply_pending", "auto-apply waits for the override"
    assert s.applies() == 0

    s.user.request("POST", f"/api/v1/runs/{run['id']}/override/", expect=200, json={"reason": "agreed"})
    s.user.wait(run["id"], "applied")
    assert s.applies() == 1


def test_it_auto_applies_a_run_that_passes_its_policies(scenario):
    s = scenario()
    s.agent("a1")
    s.user.request("PATCH", f"/api/v1/workspaces/{s.workspace['id']}/", json={"auto_apply": True}, expect=200)
    _policy_set(s.user, s.workspace["id"], ("instances", "hard-mandatory", ALLOW_ALL))
    run = s.user.queue(s.workspace["id"])
    done = s.user.wait(run["id"], "applied")
    assert done["policy_status"] == "passed"
    assert done["apply_path"] == "fast", done["apply_path_reason"]
    assert s.applies() == 1
