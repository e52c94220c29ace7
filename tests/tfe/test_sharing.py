"""Remote state sharing through the TFE API: the setting (`admin`), and what a run's job
credential reads with it (its own workspace's state and the state of the workspaces that
share theirs with it; nothing else)."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group, User

from agents_app.models import hash_token
from tasks_app.dispatch.models import Job
from tasks_app.models import AccessLevel, Task, WorkspaceAccess
from tasks_app.services.state import state_push
from tests.factories import DEMO_MAIN_TF, make_token, make_workspace
from tests.tfe.test_api import Tfe, errors

pytestmark = pytest.mark.django_db


def _state(serial: int) -> bytes:
    return json.dumps({"version": 4, "serial": serial, "lineage": "l-1", "resources": [],
                       "outputs": {"vpc_id": {"value": "vpc-1", "type": "string"}}}).encode()


@pytest.fixture
def net(pool, alice):
    ws = make_workspace(pool=pool, name="network", files={"main.tf": DEMO_MAIN_TF})
    state_push(workspace=ws, data=_state(1), lock_id=None, actor=alice)
    return ws


@pytest.fixture
def app(pool):
    return make_workspace(pool=pool, name="app", files={"main.tf": DEMO_MAIN_TF})


def _job_token(ws, kind: str = "plan", status: str = "running") -> str:
    task = Task.objects.create(workspace=ws, configuration_version=ws.configuration_versions.first(),
                               operation="plan_and_apply", status="planning")
    token = f"job-{ws.id}-{kind}-{status}-secret"
    Job.objects.create(task=task, pool=ws.pool, kind=kind, status=status, credential_hash=hash_token(token))
    return token


def _consumers(tfe: Tfe, ws, method: str, *consumers):
    return tfe.send(method, f"workspaces/ws-{ws.id}/relationships/remote-state-consumers",
                    {"data": [{"type": "workspaces", "id": f"ws-{c.id}"} for c in consumers]})


def test_it_shares_state_only_with_the_workspaces_an_admin_lists(alice, net, app):
    tfe = Tfe(make_token(alice))
    job = Tfe(_job_token(app))
    assert job.get(f"organizations/iac/workspaces/{net.name}").status_code == 404
    assert job.get(f"workspaces/ws-{net.id}/current-state-version").status_code == 404

    assert _consumers(tfe, net, "post", app).status_code == 204
    assert [w["id"] for w in tfe.get(f"workspaces/ws-{net.id}/relationships/remote-state-consumers")
            .json()["data"]] == [f"ws-{app.id}"]

    assert job.get(f"organizations/iac/workspaces/{net.name}").status_code == 200
    current = job.get(f"workspaces/ws-{net.id}/current-state-version").json()["data"]
    assert current["attributes"]["serial"] == 1
    outputs = job.get(f"workspaces/ws-{net.id}/current-state-version-outputs").json()["data"]
    assert outputs[0]["attributes"]["value"] == "vpc-1"

    assert _consumers(tfe, net, "delete", app).status_code == 204
    assert job.get(f"workspaces/ws-{net.id}/current-state-version").status_code == 404


def test_it_keeps_a_job_credential_to_state_reads(net, app):
    job = Tfe(_job_token(app))
    for path in (f"workspaces/ws-{app.id}", f"workspaces/ws-{app.id}/runs", "organizations/iac/workspaces",
                 f"workspaces/ws-{app.id}/configuration-versions"):
        assert job.get(path).status_code in (401, 403, 404), path
    assert job.send("post", f"workspaces/ws-{app.id}/state-versions",
                    {"data": {"type": "state-versions", "attributes": {"state": "e30="}}}).status_code == 401


def test_it_forgets_a_credential_when_its_job_ends(net, app, alice):
    _consumers(Tfe(make_token(alice)), net, "post", app)
    ended = Tfe(_job_token(app, status="succeeded"))
    assert ended.get(f"workspaces/ws-{net.id}/current-state-version").status_code == 401


def test_it_lets_only_an_admin_change_the_sharing(net, app):
    bob = User.objects.create_user("bob", password="bob-password-1")
    team = Group.objects.create(name="builders")
    bob.groups.add(team)
    for ws in (net, app):
        WorkspaceAccess.objects.create(workspace=ws, team=team, level=AccessLevel.WRITE)
    refused = _consumers(Tfe(make_token(bob)), net, "post", app)
    assert refused.status_code == 403 and "you need 'admin'" in errors(refused)[0]["detail"]
    assert not net.remote_state_consumers.exists()


def test_it_refuses_a_malformed_consumer_list(alice, net):
    tfe = Tfe(make_token(alice))
    for raw in (b"{", b'{"data": {}}', b'{"data": [{"type": "runs", "id": "run-1"}]}'):
        response = tfe.send("post", f"workspaces/ws-{net.id}/relationships/remote-state-consumers", raw=raw)
        assert 400 <= response.status_code < 500
    assert not net.remote_state_consumers.exists()


def test_it_shows_the_sharing_read_only_in_the_admin(alice, net, app):
    from django.test import Client

    _consumers(Tfe(make_token(alice)), net, "post", app)
    admin = Client()
    admin.force_login(alice)
    page = admin.get(f"/admin/tasks_app/workspace/{net.id}/change/")
    assert page.status_code == 200 and b"app" in page.content
    admin.post(f"/admin/tasks_app/workspace/{net.id}/change/", {
        "name": net.name, "pool": net.pool_id, "terraform_version": "", "remote_state_consumers": [],
        "access-TOTAL_FORMS": "0", "access-INITIAL_FORMS": "0"})
    assert list(net.remote_state_consumers.all()) == [app]
