"""Run options through the API, the job payload and the agent's terraform flags, driven from
the CLI against the real platform: -target, -replace, -refresh-only and -destroy."""

from __future__ import annotations

import json

import pytest

from tasks_app.models import StateVersion, Task
from tests.e2e.test_cli import iac

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TWO = """
resource "terraform_data" "a" { input = "a" }
resource "terraform_data" "b" { input = "b" }
"""


def _resources(workspace_id: int) -> list[str]:
    latest = StateVersion.objects.filter(workspace_id=workspace_id).order_by("-serial", "-id").first()
    state = json.loads(latest.data) if latest else {}
    return sorted(f"{r['type']}.{r['name']}" for r in state.get("resources", []) if r.get("instances"))


def _last_run(workspace_id: int) -> Task:
    return Task.objects.filter(workspace_id=workspace_id).latest("id")


def test_target_replace_refresh_only_and_destroy(scenario):
    s = scenario(files={"main.tf": TWO})
    s.agent("a1")
    ws = s.workspace["name"]
    wid = s.workspace["id"]

    targeted = iac(s.user, "run", "-w", ws, "--apply", "--auto-approve", "--target", "terraform_data.a")
    assert targeted.returncode == 0, targeted.stderr
    assert "Plan: 1 to add, 0 to change, 0 to destroy." in targeted.stderr
    assert _resources(wid) == ["terraform_data.a"]
    assert _last_run(wid).plan_targets == ["terraform_data.a"]

    assert iac(s.user, "run", "-w", ws, "--apply", "--auto-approve").returncode == 0
    assert _resources(wid) == ["terraform_data.a", "terraform_data.b"]

    replaced = iac(s.user, "run", "-w", ws, "--replace", "terraform_data.a")  # plan only
    assert replaced.returncode == 0, replaced.stderr
    assert _last_run(wid).plan.summary["replace"] == 1
    assert "-/+" in replaced.stdout or "must be replaced" in replaced.stdout

    refreshed = iac(s.user, "run", "-w", ws, "--refresh-only")
    assert refreshed.returncode == 0, refreshed.stderr
    assert _last_run(wid).status == "planned_no_changes"

    destroyed = iac(s.user, "run", "-w", ws, "--destroy", "--apply", "--auto-approve")
    assert destroyed.returncode == 0, destroyed.stderr
    assert "Plan: 0 to add, 0 to change, 2 to destroy." in destroyed.stderr
    assert "Resources: 0 added, 0 changed, 2 destroyed." in destroyed.stdout
    assert _resources(wid) == []

    both = iac(s.user, "run", "-w", ws, "--destroy", "--refresh-only")
    assert both.returncode == 2 and "exclude each other" in both.stderr
