"""Workspace tags through the TFE API: what `cloud { workspaces { tags = [...] } }` selects by."""

from __future__ import annotations

import pytest

from tasks_app.models import Workspace
from tests.factories import make_token
from tests.tfe.test_api import Tfe, errors

pytestmark = pytest.mark.django_db


def test_it_creates_lists_and_changes_tags(alice, pool):
    tfe = Tfe(make_token(alice))
    created = tfe.send("post", "organizations/iac/workspaces", {"data": {
        "type": "workspaces", "attributes": {"name": "app-prod"},
        "relationships": {"tags": {"data": [{"type": "tags", "attributes": {"name": "app"}}]}}}})
    assert created.status_code == 201, created.content
    assert created.json()["data"]["attributes"]["tag-names"] == ["app"]
    tfe.send("post", "organizations/iac/workspaces", {"data": {"type": "workspaces", "attributes": {"name": "other"}}})

    listed = tfe.get("organizations/iac/workspaces", **{"search[tags]": "app"}).json()["data"]
    assert [w["attributes"]["name"] for w in listed] == ["app-prod"]
    ws = Workspace.objects.get(name="app-prod")
    assert tfe.send("post", f"workspaces/ws-{ws.id}/relationships/tags",
                    {"data": [{"type": "tags", "attributes": {"name": "prod"}}]}).status_code == 204
    assert tfe.get("organizations/iac/workspaces", **{"search[tags]": "app,prod"}).json()["data"][0]["id"] == \
        f"ws-{ws.id}"
    assert tfe.send("delete", f"workspaces/ws-{ws.id}/relationships/tags",
                    {"data": [{"type": "tags", "attributes": {"name": "app"}}]}).status_code == 204
    ws.refresh_from_db()
    assert ws.tags == ["prod"]


def test_it_refuses_a_tag_terraform_would_not_write(alice, workspace):
    tfe = Tfe(make_token(alice))
    refused = tfe.send("post", f"workspaces/ws-{workspace.id}/relationships/tags",
                       {"data": [{"type": "tags", "attributes": {"name": "Has Spaces"}}]})
    assert refused.status_code == 422 and "lowercase" in errors(refused)[0]["detail"]
    workspace.refresh_from_db()
    assert workspace.tags == []
