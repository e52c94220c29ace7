"""State through the TFE API (tasks_app/tfe/views_state.py): the same versions as the http
backend's, raw state only for `write`, outputs masked as the REST API masks them."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from tasks_app.models import AccessLevel, StateLock, StateVersion, WorkspaceAccess
from tasks_app.services.state import state_push
from tests.factories import make_token
from tests.tfe.test_api import Tfe, errors

pytestmark = pytest.mark.django_db


def state(serial: int, *, lineage: str = "l-1", **outputs) -> bytes:
    return json.dumps({"version": 4, "serial": serial, "lineage": lineage, "terraform_version": "1.11.4",
                       "outputs": outputs, "resources": []}).encode()


@pytest.fixture
def tfe(alice) -> Tfe:
    return Tfe(make_token(alice))


@pytest.fixture
def reader(workspace) -> Tfe:
    """bob, with `plan` on the workspace: may read outputs, not the raw state."""
    bob = User.objects.create_user("bob", password="bob-password-1")
    team = Group.objects.create(name="planners")
    bob.groups.add(team)
    WorkspaceAccess.objects.create(workspace=workspace, team=team, level=AccessLevel.PLAN)
    return Tfe(make_token(bob))


def _pushed(workspace, alice):
    return state_push(workspace=workspace, lock_id=None, actor=alice, data=state(
        3, greeting={"value": "hi", "type": "string"}, secret={"value": "s3cret", "type": "string", "sensitive": True},
        tags={"value": ["a"], "type": ["list", "string"]}))[0]


def test_it_serves_the_current_state_at_a_signed_url(tfe, workspace, alice):
    assert tfe.get(f"workspaces/ws-{workspace.id}/current-state-version").status_code == 404
    sv = _pushed(workspace, alice)
    data = tfe.get(f"workspaces/ws-{workspace.id}/current-state-version").json()["data"]
    assert data["id"] == f"sv-{sv.id}" and data["attributes"]["serial"] == 3
    url = data["attributes"]["hosted-state-download-url"]
    raw = Client().get("/" + url.split("/", 3)[3])
    assert raw.status_code == 200 and json.loads(raw.content)["serial"] == 3
    assert Client().get(f"/api/v2/state-versions/sv-{sv.id}/download/forged").status_code == 404


def test_it_hides_the_raw_state_below_write(reader, workspace, alice):
    _pushed(workspace, alice)
    assert reader.get(f"workspaces/ws-{workspace.id}/current-state-version").status_code == 404
    outputs = reader.get(f"workspaces/ws-{workspace.id}/current-state-version-outputs").json()["data"]
    by_name = {o["attributes"]["name"]: o for o in outputs}
    assert by_name["greeting"]["attributes"]["value"] == "hi"
    assert by_name["secret"]["attributes"]["value"] is None
    assert by_name["tags"]["attributes"]["detailed-type"] == ["list", "string"]
    assert by_name["tags"]["attributes"]["type"] == "array"
    assert reader.get(f"state-version-outputs/{by_name['secret']['id']}").status_code == 403


def test_it_gives_a_sensitive_output_to_write(tfe, workspace, alice):
    _pushed(workspace, alice)
    outputs = tfe.get(f"workspaces/ws-{workspace.id}/current-state-version-outputs").json()["data"]
    secret = next(o for o in outputs if o["attributes"]["name"] == "secret")
    assert tfe.get(f"state-version-outputs/{secret['id']}").json()["data"]["attributes"]["value"] == "s3cret"


def _create(tfe: Tfe, workspace, raw: bytes | None, **attributes):
    attrs = {"serial": json.loads(raw)["serial"] if raw else 1, "lineage": "l-1", **attributes}
    if raw is not None:
        attrs.setdefault("md5", hashlib.md5(raw).hexdigest())
        attrs["state"] = base64.b64encode(raw).decode()
    return tfe.send("post", f"workspaces/ws-{workspace.id}/state-versions",
                    {"data": {"type": "state-versions", "attributes": attrs}})


def test_it_asks_go_tfe_for_the_inline_state(tfe, workspace):
    refused = _create(tfe, workspace, None)
    assert refused.status_code == 422
    assert "param is missing or the value is empty: state" in errors(refused)[0]["detail"]


def test_it_stores_a_state_version_with_the_backends_checks(tfe, workspace, alice):
    _pushed(workspace, alice)
    assert _create(tfe, workspace, state(4)).status_code == 201
    assert StateVersion.objects.filter(workspace=workspace).order_by("-serial").first().serial == 4
    older = _create(tfe, workspace, state(2))
    assert older.status_code == 409 and "older than the current serial" in errors(older)[0]["detail"]
    assert _create(tfe, workspace, state(5), md5="0" * 32).status_code == 422
    assert _create(tfe, workspace, state(5, lineage="other"), lineage="l-1").status_code == 422
    StateLock.objects.create(workspace=workspace, lock_id="held", info={"ID": "held"})
    assert _create(tfe, workspace, state(6)).status_code == 423
    assert StateVersion.objects.filter(workspace=workspace).count() == 2


def test_it_refuses_a_state_push_below_write(reader, workspace):
    assert _create(reader, workspace, state(1)).status_code == 403
    assert not StateVersion.objects.exists()
