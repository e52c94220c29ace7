"""Key-value tags, as terraform's `cloud { workspaces { tags = { env = "prod" } } }` uses
them: the real CLI selects workspaces by a tag map and creates a new one carrying it
(tag-bindings), through the TFE API (tasks_app/tfe/), as tests/tfe/test_cli.py drives it."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, Permission, User

from tasks_app.models import Workspace, WorkspaceAccess
from tasks_app.tfe.cli_config import cloud_block
from tests.factories import make_pool, make_token, make_workspace
from tests.tfe.test_api import Tfe
from tests.tfe.test_cli import MAIN_TF, CloudDir, _name, terraform  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_the_cli_selects_and_creates_workspaces_by_a_tag_map(live_url, tmp_path, terraform):  # noqa: F811
    pool, _ = make_pool()
    team = Group.objects.create(name=f"kv-{pool.id}")
    team.permissions.add(Permission.objects.get(codename="add_workspace", content_type__app_label="tasks_app"))
    pool.teams.add(team)
    erin = User.objects.create_user(f"erin-kv-{pool.id}", password="erin-password-1")
    erin.groups.add(team)
    env = f"prod-{pool.id}"
    # One workspace has the map's tags already, one only the key (another value): not selected.
    existing = make_workspace(pool=pool, name=_name())
    Workspace.objects.filter(id=existing.id).update(tag_bindings={"env": env, "tier": "web"})
    other = make_workspace(pool=pool, name=_name())
    Workspace.objects.filter(id=other.id).update(tag_bindings={"env": "staging", "tier": "web"})
    for ws in (existing, other):
        WorkspaceAccess.objects.create(workspace=ws, team=team, level="admin")

    d = CloudDir(tmp_path / "tf", live_url, "unused", make_token(erin), terraform)
    block = cloud_block(live_url, settings.IAC_ORGANIZATION, "x").replace(
        'name = "x"', f'tags = {{ env = "{env}", tier = "web" }}')
    (d.path / "main.tf").write_text(block + MAIN_TF)
    init = d.run("init", "-input=false")
    assert init.returncode == 0, init.stdout + init.stderr
    listed = d.run("workspace", "list")
    assert existing.name in listed.stdout and other.name not in listed.stdout, listed.stdout + listed.stderr

    # A new workspace from the CLI carries the map.
    name = _name()
    made = d.run("workspace", "new", name)
    assert made.returncode == 0, made.stdout + made.stderr
    created = Workspace.objects.get(name=name)
    assert created.tag_bindings == {"env": env, "tier": "web"} and created.pool == pool
    listed = d.run("workspace", "list")
    assert name in listed.stdout and existing.name in listed.stdout, listed.stdout


def test_tag_bindings_through_the_api(alice, pool):
    tfe = Tfe(make_token(alice))
    made = tfe.send("post", "organizations/iac/workspaces", {"data": {
        "type": "workspaces", "attributes": {"name": "kv-app"},
        "relationships": {"tag-bindings": {"data": [
            {"type": "tag-bindings", "attributes": {"key": "env", "value": "prod"}}]}}}})
    assert made.status_code == 201, made.content
    ws = Workspace.objects.get(name="kv-app")
    changed = tfe.send("patch", f"workspaces/ws-{ws.id}/tag-bindings", {"data": [
        {"type": "tag-bindings", "attributes": {"key": "env", "value": "staging"}},
        {"type": "tag-bindings", "attributes": {"key": "team"}}]})
    assert changed.status_code == 200, changed.content
    assert [(b["attributes"]["key"], b["attributes"]["value"]) for b in changed.json()["data"]] == [
        ("env", "staging"), ("team", "")]
    effective = tfe.get(f"workspaces/ws-{ws.id}/effective-tag-bindings").json()["data"]
    assert {b["type"] for b in effective} == {"effective-tag-bindings"} and len(effective) == 2
    found = tfe.get("organizations/iac/workspaces", **{"filter[tagged][0][key]": "env",
                                                       "filter[tagged][0][value]": "staging"}).json()["data"]
    assert [w["attributes"]["name"] for w in found] == ["kv-app"]
    assert tfe.get("organizations/iac/workspaces", **{"filter[tagged][0][key]": "env",
                                                      "filter[tagged][0][value]": "prod"}).json()["data"] == []
    reserved = tfe.send("patch", f"workspaces/ws-{ws.id}/tag-bindings", {"data": [
        {"type": "tag-bindings", "attributes": {"key": "hc:owner", "value": "x"}}]})
    assert reserved.status_code == 422 and "reserved" in reserved.json()["errors"][0]["detail"]
    ws.refresh_from_db()
    assert ws.tag_bindings == {"env": "staging", "team": ""}
