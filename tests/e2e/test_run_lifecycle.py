"""The foundation, end to end: real Daphne, real Celery, real agent processes, real terraform."""

from __future__ import annotations

import hashlib
import io
import re
import zipfile

import pytest

from tasks_app.dispatch.models import Job
from tasks_app.models import Plan, StateVersion, Task
from tests.live import wait_for

CREDENTIAL = re.compile(rb"job-[A-Za-z0-9_-]{40,}")

# An apply that writes "started", then takes a minute: long enough to kill or cancel it.
SLOW_APPLY_TF = """
variable "marker_file" { type = string }
resource "terraform_data" "slow" {
  provisioner "local-exec" {
    command = "echo started >> ${var.marker_file}; sleep 60; echo applied >> ${var.marker_file}"
  }
}
"""

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_it_plans_confirms_and_applies_exactly_once(scenario):
    s = scenario()
    a1 = s.agent("a1")
    run = s.user.queue(s.workspace["id"], "plan_and_apply")

    pending = s.user.wait(run["id"], "apply_pending")
    assert pending["plan_summary"]["add"] == 1
    assert s.applies() == 0, "nothing is applied before Confirm"

    assert s.user.confirm(run["id"]).status_code == 200
    done = s.user.wait(run["id"], "applied")

    assert s.applies() == 1
    assert StateVersion.objects.filter(workspace_id=s.workspace["id"]).count() == 1
    plan = Plan.objects.get(task_id=run["id"])
    assert hashlib.sha256(plan.data).hexdigest() == plan.sha256 == done["plan_hash"]
    log = s.user.log(run["id"])
    assert "Plan: 1 to add" in log
    assert "Apply complete! Resources: 1 added" in log
    # No job credential in plan.out or anywhere in the work dir: they reach terraform only
    # through TF_HTTP_* environment variables.
    with zipfile.ZipFile(io.BytesIO(plan.data)) as zf:
        assert not any(CREDENTIAL.search(zf.read(name)) for name in zf.namelist())
    work_files = [p for p in a1.work_root.rglob("*") if p.is_file() and "providers" not in p.parts]
    assert work_files, "the agent keeps the work dir"
    assert not any(CREDENTIAL.search(p.read_bytes()) for p in work_files)


def test_it_ends_a_plan_without_changes_without_asking_for_confirmation(scenario):
    s = scenario()
    s.agent("a1")
    first = s.user.queue(s.workspace["id"])
    s.user.wait(first["id"], "apply_pending")
    s.user.confirm(first["id"])
    s.user.wait(first["id"], "applied")

    second = s.user.queue(s.workspace["id"])
    run = s.user.wait(second["id"], "planned_no_changes")
    assert run["confirmed_at"] is None
    assert s.applies() == 1


def test_it_errors_a_broken_config_with_terraforms_own_message(scenario):
    s = scenario(files={"main.tf": 'resource "terraform_data" "x" {\n  input = \n}\n'})
    s.agent("a1")
    run = s.user.queue(s.workspace["id"], "plan")
    s.user.wait(run["id"], "errored")
    log = s.user.log(run["id"])
    assert "Error:" in log and "main.tf" in log
    assert "terraform init exited" in s.user.run(run["id"])["message"]


def test_it_runs_plan_only_runs_beside_a_waiting_apply(scenario):
    s = scenario()
    s.agent("a1")
    applying = s.user.queue(s.workspace["id"], "plan_and_apply")
    s.user.wait(applying["id"], "apply_pending")
    blocked = s.user.queue(s.workspace["id"], "plan_and_apply")
    speculative = s.user.queue(s.workspace["id"], "plan")

    s.user.wait(speculative["id"], "planned")
    assert s.user.run(blocked["id"])["status"] == "pending"
    assert s.user.run(blocked["id"])["waiting_reason"] == f"pending: run #{applying['id']} (apply_pending) holds the workspace"

    s.user.request("POST", f"/api/v1/runs/{applying['id']}/discard/", json={}, expect=200)
    s.user.wait(blocked["id"], "apply_pending")
    assert s.applies() == 0


def test_it_errors_an_apply_whose_agent_died_and_never_reruns_it(scenario):
    s = scenario(files={"main.tf": SLOW_APPLY_TF})
    a1 = s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    s.user.wait(run["id"], "apply_pending")
    s.user.confirm(run["id"])
    s.user.wait(run["id"], "applying")
    wait_for(lambda: s.marker.exists(), 30, "the apply to start its provisioner")
    a1.kill()
    s.agent("a2")
    errored = s.user.wait(run["id"], "errored", timeout=30)
    # The sweep finds the dead agent by its silence or by the apply's lease running out,
    # whichever it reaches first on a loaded machine: either message names the agent.
    assert "during the apply" in errored["message"] and "a1" in errored["message"]
    assert "went offline" in errored["message"] or "stopped reporting it" in errored["message"]
    assert "not re-run" in errored["message"]
    assert Job.objects.filter(task_id=run["id"], kind="apply").count() == 1
    assert s.marker.read_text().count("started") == 1
    assert Task.objects.get(id=run["id"]).status == "errored"


def test_it_cancels_a_running_apply_by_interrupting_terraform(scenario):
    s = scenario(files={"main.tf": SLOW_APPLY_TF})
    s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    s.user.wait(run["id"], "apply_pending")
    s.user.confirm(run["id"])
    wait_for(lambda: s.marker.exists(), 30, "the apply to start its provisioner")
    s.user.request("POST", f"/api/v1/runs/{run['id']}/cancel/", json={}, expect=200)

    cancelled = s.user.wait(run["id"], "cancelled", timeout=30)
    assert "cancelled" in cancelled["message"]
    assert "applied" not in s.marker.read_text()
    assert s.user.confirm(run["id"]).status_code == 409


def test_it_applies_without_a_confirm_click_on_an_auto_apply_workspace(scenario):
    s = scenario()
    s.user.request("PATCH", f"/api/v1/workspaces/{s.workspace['id']}/", json={"auto_apply": True}, expect=200)
    s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    done = s.user.wait(run["id"], "applied")
    assert done["apply_path"] == "fast"
    assert [e["actor"] for e in done["events"] if e["to_status"] == "apply_queued"] == ["auto-apply"]
    assert s.applies() == 1
