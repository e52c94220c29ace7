"""The command-line client against the real platform (Daphne, Celery, a real agent, real
terraform), run as a pipeline runs it: a subprocess with IAC_URL and IAC_TOKEN, no terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks_app.models import ConfigurationVersion, Task
from tests.factories import DEMO_MAIN_TF

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


def iac(user, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    token = user.s.headers["Authorization"].split(" ", 1)[1]
    env = {"PATH": os.environ["PATH"], "IAC_URL": user.base, "IAC_TOKEN": token, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "iacplatform.cli", *args], capture_output=True, text=True,
                          env=env, timeout=180, input=stdin if stdin is not None else "", cwd=ROOT)


def _config_dir(tmp_path: Path, main_tf: str) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "main.tf").write_text(main_tf)
    (directory / "notes.secret").write_text("do not upload")
    (directory / "cache").mkdir()
    (directory / "cache" / "big.bin").write_text("x" * 1000)
    (directory / ".terraformignore").write_text("*.secret\ncache/\n")
    return directory


def test_the_pipeline_one_liner_uploads_plans_confirms_and_applies(scenario, tmp_path):
    s = scenario()
    s.agent("a1")
    directory = _config_dir(tmp_path, DEMO_MAIN_TF.replace('"hello"', '"from the cli"'))

    result = iac(s.user, "run", "--workspace", s.workspace["name"], "--dir", str(directory), "--apply",
                 "--auto-approve")

    assert result.returncode == 0, result.stderr + result.stdout
    assert "Plan: 1 to add, 0 to change, 0 to destroy." in result.stderr
    assert "Apply complete! Resources: 1 added" in result.stdout  # the streamed log
    assert result.stderr.strip().endswith(": applied")
    assert s.marker.read_text().strip() == "applied from the cli"
    # .terraformignore honoured: the ignored files never reached the platform.
    cv = ConfigurationVersion.objects.filter(workspace_id=s.workspace["id"]).latest("id")
    assert sorted(cv.files) == [".terraformignore", "main.tf"]
    assert Task.objects.filter(workspace_id=s.workspace["id"]).get().status == "applied"
    outputs = s.user.request("GET", f"/api/v1/workspaces/{s.workspace['id']}/outputs/", expect=200).json()
    assert outputs == [{"name": "greeting", "sensitive": False, "type": "string", "value": "from the cli"}]


def test_a_failing_plan_exits_non_zero_with_terraforms_error(scenario, tmp_path):
    s = scenario()
    s.agent("a1")
    directory = _config_dir(tmp_path, 'resource "terraform_data" "x" {\n  input = \n}\n')
    result = iac(s.user, "run", "--workspace", s.workspace["name"], "--dir", str(directory), "--apply",
                 "--auto-approve")
    assert result.returncode == 1
    assert "Error:" in result.stdout
    assert ": errored" in result.stderr


def test_without_a_terminal_or_auto_approve_it_leaves_the_apply_waiting_and_says_so(scenario):
    s = scenario()
    s.agent("a1")
    result = iac(s.user, "run", "--workspace", str(s.workspace["id"]), "--apply")
    assert result.returncode == 2, result.stderr
    assert "waits for confirmation" in result.stderr
    run = Task.objects.get(workspace_id=s.workspace["id"])
    assert run.status == "apply_pending" and s.applies() == 0
    confirmed = iac(s.user, "confirm", str(run.id))
    assert confirmed.returncode == 0, confirmed.stderr
    assert s.applies() == 1


def test_a_plan_only_run_and_an_unknown_workspace(scenario):
    s = scenario()
    s.agent("a1")
    result = iac(s.user, "run", "--workspace", s.workspace["name"])
    assert result.returncode == 0, result.stderr
    assert "Plan: 1 to add" in result.stderr and ": planned" in result.stderr
    missing = iac(s.user, "run", "--workspace", "no-such-workspace")
    assert missing.returncode == 1 and "no workspace 'no-such-workspace'" in missing.stderr


SOFT_POLICY = '''package terraform.no_data

deny contains msg if {
  some rc in input.plan.resource_changes
  rc.type == "terraform_data"
  msg := sprintf("%s is not allowed", [rc.address])
}
'''


def test_it_prints_the_policy_check_and_waits_for_the_override_before_it_applies(scenario, tmp_path):
    s = scenario()
    s.agent("a1")
    s.user.request("POST", "/api/v1/policy-sets/", expect=201, json={"name": "guard", "workspaces": [s.workspace["id"]],
        "policies": [{"name": "no-data", "enforcement_level": "soft-mandatory", "module": SOFT_POLICY}]})

    held = iac(s.user, "run", "-w", s.workspace["name"], "--apply", "--auto-approve")
    assert held.returncode == 3, held.stderr
    assert "Policy check: soft_failed (0 of 1 policies passed)" in held.stderr
    assert "FAIL  guard/no-data (soft-mandatory)" in held.stderr
    assert "terraform_data.demo is not allowed" in held.stderr
    assert s.applies() == 0
    [run] = Task.objects.filter(workspace_id=s.workspace["id"])

    overridden = iac(s.user, "override", str(run.id), "--reason", "agreed in the change review")
    assert overridden.returncode == 0, overridden.stderr
    assert "policy check overridden" in overridden.stderr
    applied = iac(s.user, "confirm", str(run.id))
    assert applied.returncode == 0, applied.stderr
    shown = iac(s.user, "status", str(run.id))
    assert "overridden by alice: agreed in the change review" in shown.stdout
    assert s.applies() == 1
