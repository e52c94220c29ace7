"""pytfe, the official Python SDK for the TFE API, as a second client against a live
server: the resources it covers that terraform's flow uses."""

from __future__ import annotations

import io
import json
import uuid

import pytest
import pytfe
from django.contrib.auth.models import Group, Permission, User
from pytfe.errors import NotFound
from pytfe.models import (
    ConfigurationVersion,
    ConfigurationVersionCreateOptions,
    RunCreateOptions,
    WorkspaceCreateOptions,
    WorkspaceLockOptions,
)
from pytfe.models import Workspace as SdkWorkspace

from tasks_app.models import Task, Workspace
from tasks_app.services.state import state_push
from tests.factories import DEMO_MAIN_TF, make_pool, make_token, make_workspace
from tests.live import wait_for
from tests.tfe.test_api import archive

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def client(live_url: str, token: str):
    return pytfe.TFEClient(pytfe.TFEConfig(address=live_url, token=token, http2=False, max_retries=0))


@pytest.fixture
def tfe(live_url, alice):
    with client(live_url, make_token(alice)) as sdk:
        yield sdk


@pytest.fixture
def ws(db):
    pool, _ = make_pool()
    return make_workspace(pool=pool, name=f"sdk-{uuid.uuid4().hex[:8]}", files={"main.tf": DEMO_MAIN_TF})


def test_it_reads_the_organization_and_workspaces(tfe, ws, settings):
    assert tfe.organizations.read_entitlements(settings.IAC_ORGANIZATION).operations is True
    with pytest.raises(NotFound):
        tfe.organizations.read_entitlements("someone-else")
    by_name = tfe.workspaces.read(ws.name, organization=settings.IAC_ORGANIZATION)
    assert by_name.id == f"ws-{ws.id}"
    assert tfe.workspaces.read_by_id(by_name.id).name == ws.name
    assert ws.name in [w.name for w in tfe.workspaces.list(settings.IAC_ORGANIZATION)]


def test_it_creates_locks_and_unlocks_a_workspace(live_url, settings):
    pool, _ = make_pool()
    team = Group.objects.create(name=f"sdk-{pool.id}")
    team.permissions.add(Permission.objects.get(codename="add_workspace", content_type__app_label="tasks_app"))
    pool.teams.add(team)
    dana = User.objects.create_user(f"dana-{pool.id}", password="dana-password-1")
    dana.groups.add(team)
    with client(live_url, make_token(dana)) as tfe:
        created = tfe.workspaces.create(settings.IAC_ORGANIZATION, WorkspaceCreateOptions(name=f"sdk-new-{pool.id}"))
        assert Workspace.objects.get(name=f"sdk-new-{pool.id}").pool == pool
        locked = tfe.workspaces.lock(created.id, WorkspaceLockOptions(reason="maintenance"))
        assert locked.locked is True
        assert tfe.workspaces.unlock(created.id).locked is False


def test_it_uploads_a_configuration_and_queues_and_cancels_a_run(tfe, ws):
    cv = tfe.configuration_versions.create(f"ws-{ws.id}", ConfigurationVersionCreateOptions(speculative=False))
    assert cv.upload_url.startswith("http")
    tfe.configuration_versions.upload_tar_gzip(cv.upload_url, io.BytesIO(archive({"main.tf": DEMO_MAIN_TF})))
    assert tfe.configuration_versions.read(cv.id).status == "uploaded"

    run = tfe.runs.create(RunCreateOptions(workspace=SdkWorkspace(id=f"ws-{ws.id}"),
                                           configuration_version=ConfigurationVersion(id=cv.id)))
    read = tfe.runs.read(run.id)
    assert read.id == run.id
    assert read.actions.is_cancelable
    tfe.runs.cancel(run.id)
    wait_for(lambda: Task.objects.get(id=int(run.id[4:])).status == "cancelled", 10, "the run to be cancelled")
    assert tfe.runs.read(run.id).status == "canceled"
    assert tfe.plans.read(f"plan-{run.id[4:]}").id == f"plan-{run.id[4:]}"


def test_it_serves_the_current_state_and_its_outputs(tfe, ws, alice):
    state_push(workspace=ws, lock_id=None, actor=alice, data=json.dumps({
        "version": 4, "serial": 7, "lineage": "l-1", "resources": [],
        "outputs": {"greeting": {"value": "hi", "type": "string"}}}).encode())
    current = tfe.state_versions.read_current(f"ws-{ws.id}")
    assert current.serial == 7
    assert json.loads(tfe.state_versions.download_current(f"ws-{ws.id}"))["serial"] == 7
    outputs = list(tfe.state_version_outputs.read_current(f"ws-{ws.id}"))
    assert [(o.name, o.value) for o in outputs] == [("greeting", "hi")]
