"""Variable sets: HCP Terraform's precedence (pure), and who may create and attach a set, with
the workspace variables' name rules, through the REST API."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from tasks_app.models import AccessLevel, AuditEvent
from tasks_app.workflows.models import VariableSet
from tasks_app.workflows.precedence import SetValue, resolve
from tests.factories import grant, make_token, make_workspace


@dataclass
class V:
    key: str
    value: str
    category: str = "terraform"
    sensitive: bool = False


def _set(name: str, scope: str, priority: bool, value: str, key: str = "region") -> SetValue:
    return SetValue(variable=V(key, value), set_id=hash(name) % 1000, set_name=name, scope=scope, priority=priority)


def _winner(**kw) -> str:
    resolved = resolve(workspace_variables=kw.get("ws", []), set_variables=kw.get("sets", []),
                       run_variables=kw.get("run", {}))
    [only] = [r for r in resolved if r.key == "region"]
    return only.value


def test_it_ranks_variables_as_hcp_terraform_documents():
    ws = [V("region", "workspace")]
    g, t, w = (_set("g", "global", False, "global"), _set("t", "team", False, "team"),
               _set("w", "workspaces", False, "attached"))
    assert _winner(sets=[g, t, w]) == "attached"  # the more specific scope wins
    assert _winner(sets=[g, t]) == "team"
    assert _winner(ws=ws, sets=[g, t, w]) == "workspace"  # the workspace over non-priority sets
    assert _winner(ws=ws, sets=[w, _set("p", "global", True, "priority")]) == "priority"
    assert _winner(ws=ws, sets=[_set("p1", "global", True, "pg"), _set("p2", "workspaces", True, "pw")]) == "pw"
    assert _winner(ws=ws, sets=[_set("p", "global", True, "priority")], run={"region": "cli"}) == "cli"
    # Same scope, same priority: the set whose name sorts first.
    assert _winner(sets=[_set("B_set", "workspaces", False, "b"), _set("A_set", "workspaces", False, "a")]) == "a"
    # Categories are separate namespaces.
    env = resolve(workspace_variables=[V("region", "env-ws", category="env")], set_variables=[g], run_variables={})
    assert {(r.category, r.value) for r in env} == {("env", "env-ws"), ("terraform", "global")}


@pytest.fixture
def bob(db) -> User:
    return User.objects.create_user("bob", password="bob-password-1")


def _client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {make_token(user)}")
    return client


def test_it_lets_a_team_attach_its_set_only_where_it_administers(bob, charlie, pool):
    mine, theirs = make_workspace(pool=pool), make_workspace(pool=pool)
    team = grant(bob, mine, AccessLevel.ADMIN, team_name="net")
    grant(bob, theirs, AccessLevel.WRITE, team_name="net-writers")
    api = _client(bob)

    refused = api.post("/api/v1/variable-sets/", {"name": "everyone", "scope": "global"}, format="json")
    assert refused.status_code == 403 and "site admin" in refused.json()["detail"]
    assert api.post("/api/v1/variable-sets/", {"name": "x", "team": "net-writers-nope"},
                    format="json").status_code == 400
    created = api.post("/api/v1/variable-sets/", {"name": "net-creds", "team": "net"}, format="json")
    assert created.status_code == 201, created.content
    set_id = created.json()["id"]
    assert api.put(f"/api/v1/variable-sets/{set_id}/workspaces/{mine.id}/").status_code == 200
    refused = api.put(f"/api/v1/variable-sets/{set_id}/workspaces/{theirs.id}/")
    assert refused.status_code == 403 and "needs 'admin'" in refused.json()["detail"]
    assert list(VariableSet.objects.get(id=set_id).workspaces.all()) == [mine]

    # The workspace variables' name rules, and write-only secrets.
    bad = api.post(f"/api/v1/variable-sets/{set_id}/variables/",
                   {"key": "LD_PRELOAD", "value": "/x.so", "category": "env"}, format="json")
    assert bad.status_code == 400 and "LD_" in bad.json()["errors"]["key"][0]
    ok = api.post(f"/api/v1/variable-sets/{set_id}/variables/",
                  {"key": "TOKEN", "value": "s3cret", "category": "env", "sensitive": True}, format="json")
    assert ok.status_code == 201 and ok.json()["value"] is None
    twice = api.post(f"/api/v1/variable-sets/{set_id}/variables/",
                     {"key": "TOKEN", "value": "again", "category": "env"}, format="json")
    assert twice.status_code == 400 and "already exists" in str(twice.json())

    # An outsider does not see the set at all; a reader of the workspace sees its keys only.
    outsider = _client(charlie)
    assert outsider.get(f"/api/v1/variable-sets/{set_id}/").status_code == 404
    assert outsider.get("/api/v1/variable-sets/").json() == [] or outsider.get(
        "/api/v1/variable-sets/").json().get("results") == []
    grant(charlie, mine, AccessLevel.READ)
    applied = outsider.get(f"/api/v1/workspaces/{mine.id}/variable-sets/").json()
    assert applied[0]["name"] == "net-creds" and applied[0]["variables"][0]["value"] is None
    assert "s3cret" not in str(list(AuditEvent.objects.values_list("data", flat=True)))
    assert team.name == "net"


def test_a_reader_sees_every_output_masked_once_a_sets_secret_the_state_may_hold_is_rotated(alice, charlie, pool):
    """The state may hold a variable set's old secret in clear (an output that prints it): while
    the set still has that value, a reader sees it masked by value; once it is rotated, the
    old value is known no more, so every output is masked for readers (as for a workspace
    variable's)."""
    import json

    from iacplatform import crypto
    from tasks_app.models import StateVersion
    from tasks_app.workflows.models import VariableSetVariable
    from tasks_app.workflows.variable_sets import set_variable_update, variable_set_create

    ws = make_workspace(pool=pool)
    grant(charlie, ws, AccessLevel.READ, team_name="readers")
    shared = variable_set_create(actor=alice, name="shared", scope="global")
    secret = VariableSetVariable(variable_set=shared, key="api_key", category="terraform", sensitive=True)
    secret.set_value("k3y-0ld-v4lue")
    secret.save()
    state = json.dumps({"version": 4, "serial": 1, "lineage": "l", "outputs": {
        "url": {"value": "https://svc?key=k3y-0ld-v4lue", "type": "string"},
        "region": {"value": "eu-west-1", "type": "string"}}}).encode()
    StateVersion.objects.create(workspace=ws, serial=1, lineage="l", sha256="c" * 64, size=len(state),
                                encrypted_data=crypto.encrypt(state))

    def outputs() -> dict:
        return {o["name"]: o["value"] for o in _client(charlie).get(f"/api/v1/workspaces/{ws.id}/outputs/").json()}

    assert outputs() == {"region": "eu-west-1", "url": "https://svc?key=***"}
    set_variable_update(variable=secret, actor=alice, changes={"value": "k3y-n3w-v4lue"})
    assert outputs() == {"region": "***", "url": "***"}, "what the state holds can no longer be told apart"
    assert _client(alice).get(f"/api/v1/workspaces/{ws.id}/outputs/").json()[1]["value"] == \
        "https://svc?key=k3y-0ld-v4lue"
