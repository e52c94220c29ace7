"""The workspaces list and a workspace page: search, the "needs attention" filter, forms for
variables, settings, lock, access and configuration upload, and the state diff.

bob is in a team with `plan` on the workspace (he reads it and queues plans, nothing more),
charlie is an outsider, alice a site admin."""

from __future__ import annotations

import io
import json
import tarfile
from html import unescape

import pytest
from django.contrib.auth.models import Group, User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from iacplatform import crypto
from tasks_app.models import (
    AccessLevel,
    AuditEvent,
    ConfigurationVersion,
    StateVersion,
    Task,
    Variable,
    Workspace,
    WorkspaceAccess,
)
from tasks_app.services.runs import run_create
from tasks_app.states import RunStatus
from tests.factories import DEMO_MAIN_TF, grant, make_workspace

SECRET = "hunter2-never-shown-5c1e"


def page(response) -> str:
    return unescape(response.content.decode())


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def bob(db, workspace) -> User:
    user = User.objects.create_user("bob", password="bob-password-1")
    grant(user, workspace, AccessLevel.PLAN, team_name="planners")
    return user


def state_bytes(serial: int, password: str, name: str) -> bytes:
    """A Terraform 4 state as terraform 1.11 writes it for a terraform_data whose input holds
    a sensitive password (its `output` copies it, unmarked) and a sensitive output."""
    value = {"value": {"name": name, "password": password}, "type": ["object", {"name": "string", "password": "string"}]}
    return json.dumps({
        "version": 4, "terraform_version": "1.11.4", "serial": serial, "lineage": "l-1",
        "outputs": {"plain": {"value": name, "type": "string"},
                    "secret": {"value": password, "type": "string", "sensitive": True}},
        "resources": [{"mode": "managed", "type": "terraform_data", "name": "a", "provider": "p",
                       "instances": [{"schema_version": 0,
                                      "attributes": {"id": "i-1", "input": value, "output": value},
                                      "sensitive_attributes": [[{"type": "get_attr", "value": "input"},
                                                                {"type": "get_attr", "value": "password"}]]}]}],
    }).encode()


def add_state(workspace, serial: int, password: str, name: str) -> StateVersion:
    data = state_bytes(serial, password, name)
    return StateVersion.objects.create(workspace=workspace, serial=serial, lineage="l-1", sha256="0" * 64,
                                       size=len(data), encrypted_data=crypto.encrypt(data))


def targz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# The list ----------------------------------------------------------------------------------


def test_it_lists_each_workspace_with_its_latest_run_status(alice, workspace):
    run = run_create(workspace=workspace, operation="plan", actor=alice)
    html = page(login(alice).get("/"))
    assert f'id="workspace-row-{workspace.id}"' in html
    assert f"run {run.id}" in html
    assert f'data-status="{Task.objects.get(id=run.id).status}"' in html


def test_it_filters_the_workspaces_that_need_attention(alice, pool, workspace):
    calm = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    broken = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    waiting = run_create(workspace=workspace, operation="plan_and_apply", actor=alice)
    Task.objects.filter(id=waiting.id).update(status=RunStatus.APPLY_PENDING)
    failed = run_create(workspace=broken, operation="plan", actor=alice)
    Task.objects.filter(id=failed.id).update(status=RunStatus.ERRORED)

    html = page(login(alice).get("/?attention=1"))
    assert workspace.name in html and broken.name in html
    assert calm.name not in html
    assert "waiting for Confirm" in html


def test_it_searches_and_answers_htmx_with_the_table_alone(alice, pool, workspace):
    other = make_workspace(pool=pool, name="payments-prod")
    client = login(alice)
    full = page(client.get("/?q=payments"))
    assert "payments-prod" in full and workspace.name not in full and "<html" in full

    partial = page(client.get("/?q=payments", HTTP_HX_REQUEST="true"))
    assert partial.lstrip().startswith('<div id="workspace-table">')
    assert "<html" not in partial
    assert f'href="/workspaces/{other.id}/"' in partial  # links keep their href
    # The back button after a history cache miss needs the whole page again.
    restored = page(client.get("/?q=payments", HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true"))
    assert "<html" in restored


def test_it_takes_any_search_text_without_failing(alice, workspace):
    response = login(alice).get("/?q=a%00b")
    assert response.status_code == 200 and "No workspace matches" in page(response)


def test_it_says_what_to_do_when_nothing_matches(alice, workspace):
    html = page(login(alice).get("/?q=nothing-like-this"))
    assert "No workspace matches “nothing-like-this”" in html
    assert "Show all workspaces" in html


def test_it_shows_charlie_no_workspace_he_cannot_read(charlie, workspace):
    html = page(login(charlie).get("/"))
    assert workspace.name not in html
    assert "No workspaces yet" in html


# Variables ---------------------------------------------------------------------------------


def test_it_never_renders_a_sensitive_value_back(alice, workspace):
    client = login(alice)
    response = client.post(f"/workspaces/{workspace.id}/variables/",
                           {"key": "db_password", "value": SECRET, "category": "terraform", "sensitive": "on"})
    assert response.status_code == 302
    var = Variable.objects.get(workspace=workspace, key="db_password")
    assert var.sensitive and var.value == SECRET and var.plain_value == ""
    html = page(client.get(f"/workspaces/{workspace.id}/", follow=True))
    assert "db_password" in html and "sensitive · write-only" in html
    assert SECRET not in html

    # Saved with a blank value, the secret is kept (write-only fields are never pre-filled).
    client.post(f"/variables/{var.id}/", {"key": "db_password", "value": "", "category": "terraform"})
    var.refresh_from_db()
    assert var.sensitive and var.value == SECRET
    audit = AuditEvent.objects.filter(action__startswith="variable.").values_list("data", flat=True)
    assert all(SECRET not in json.dumps(d) for d in audit)


def test_it_edits_and_deletes_a_variable(alice, workspace):
    client = login(alice)
    client.post(f"/workspaces/{workspace.id}/variables/", {"key": "region", "value": "eu", "category": "terraform"})
    var = Variable.objects.get(workspace=workspace, key="region")
    client.post(f"/variables/{var.id}/", {"key": "region", "value": "us", "category": "terraform"})
    var.refresh_from_db()
    assert var.value == "us"
    client.post(f"/variables/{var.id}/delete/")
    assert not Variable.objects.filter(id=var.id).exists()


def test_it_refuses_a_bad_variable_with_a_clear_message(alice, workspace):
    client = login(alice)
    client.post(f"/workspaces/{workspace.id}/variables/", {"key": "region", "value": "eu", "category": "terraform"})
    response = client.post(f"/workspaces/{workspace.id}/variables/",
                           {"key": "region", "value": "us", "category": "terraform"}, follow=True)
    assert "Variable not added: key: a terraform variable 'region' already exists in this workspace" in page(response)
    response = client.post(f"/workspaces/{workspace.id}/variables/",
                           {"key": "not a key!", "value": "x", "category": "terraform"}, follow=True)
    assert "Variable not added: key:" in page(response)
    assert list(Variable.objects.filter(workspace=workspace).values_list("key", "plain_value")) == [("region", "eu")]


def test_it_refuses_variable_edits_to_bob_and_charlie(bob, charlie, workspace):
    var = Variable(workspace=workspace, key="region")
    var.set_value("eu")
    var.save()
    for user, code in ((bob, 403), (charlie, 404)):
        client = login(user)
        assert client.post(f"/workspaces/{workspace.id}/variables/",
                           {"key": "x", "value": "y", "category": "terraform"}).status_code == code
        assert client.post(f"/variables/{var.id}/", {"key": "region", "value": "us"}).status_code == code
        assert client.post(f"/variables/{var.id}/delete/").status_code == code
    var.refresh_from_db()
    assert var.value == "eu" and Variable.objects.filter(workspace=workspace).count() == 1
    assert "you need 'write'" in page(login(bob).post(f"/variables/{var.id}/delete/"))


# Settings, lock, access --------------------------------------------------------------------


def test_it_saves_settings_for_an_admin(alice, pool, workspace):
    client = login(alice)
    response = client.post(f"/workspaces/{workspace.id}/settings/", {"pool": pool.id, "auto_apply": "on"}, follow=True)
    assert "Settings saved." in page(response)
    workspace.refresh_from_db()
    assert workspace.auto_apply
    assert AuditEvent.objects.filter(action="workspace.update", object_id=str(workspace.id)).exists()


def test_it_lets_a_writer_lock_but_not_change_settings(db, workspace):
    writer = User.objects.create_user("bob", password="bob-password-1")
    grant(writer, workspace, AccessLevel.WRITE)
    client = login(writer)
    assert client.post(f"/workspaces/{workspace.id}/lock/").status_code == 302
    workspace.refresh_from_db()
    assert workspace.locked
    response = client.post(f"/workspaces/{workspace.id}/settings/", {"pool": workspace.pool_id, "auto_apply": "on"})
    assert response.status_code == 403 and "you need 'admin'" in page(response)
    client.post(f"/workspaces/{workspace.id}/unlock/")
    workspace.refresh_from_db()
    assert not workspace.locked and not workspace.auto_apply
    assert list(AuditEvent.objects.filter(object_id=str(workspace.id)).values_list("action", flat=True)
                .order_by("id")) == ["workspace.lock", "workspace.unlock"]


def test_it_refuses_settings_lock_and_access_to_bob_and_charlie(bob, charlie, workspace):
    Group.objects.create(name="outsiders")
    for user, code in ((bob, 403), (charlie, 404)):
        client = login(user)
        assert client.post(f"/workspaces/{workspace.id}/settings/",
                           {"pool": workspace.pool_id, "auto_apply": "on"}).status_code == code
        assert client.post(f"/workspaces/{workspace.id}/lock/").status_code == code
        assert client.post(f"/workspaces/{workspace.id}/access/",
                           {"team": "outsiders", "level": "admin"}).status_code == code
    workspace.refresh_from_db()
    assert not workspace.locked and not workspace.auto_apply
    assert not WorkspaceAccess.objects.filter(team__name="outsiders").exists()
    assert not AuditEvent.objects.exists()


def test_it_gives_and_removes_team_access(alice, charlie, workspace):
    team = Group.objects.create(name="outsiders")
    team.user_set.add(charlie)
    client = login(alice)
    client.post(f"/workspaces/{workspace.id}/access/", {"team": "outsiders", "level": "read"})
    assert login(charlie).get(f"/workspaces/{workspace.id}/").status_code == 200
    response = client.post(f"/workspaces/{workspace.id}/access/", {"team": "nobody", "level": "read"}, follow=True)
    assert "Access not changed: no team 'nobody'" in page(response)
    response = client.post(f"/workspaces/{workspace.id}/access/", {"team": "a\x00b", "level": "read"}, follow=True)
    assert "Access not changed: team: a team name" in page(response)
    response = client.post(f"/workspaces/{workspace.id}/access/", {"team": "outsiders", "level": "owner"}, follow=True)
    assert "Access not changed: level: must be one of read, plan, write, admin" in page(response)
    assert WorkspaceAccess.objects.get(team=team).level == "read"
    client.post(f"/workspaces/{workspace.id}/access/", {"team": "outsiders", "remove": "1"})
    assert login(charlie).get(f"/workspaces/{workspace.id}/").status_code == 404


# Configuration upload ----------------------------------------------------------------------


def test_it_uploads_a_configuration_archive(alice, workspace):
    archive = targz({"main.tf": b'resource "terraform_data" "x" {}\n'})
    response = login(alice).post(f"/workspaces/{workspace.id}/configuration/",
                                 {"archive": SimpleUploadedFile("config.tar.gz", archive)}, follow=True)
    latest = ConfigurationVersion.objects.filter(workspace=workspace).order_by("-id").first()
    assert f"Configuration {latest.id} uploaded (main.tf)." in page(response)


@pytest.mark.parametrize(("archive", "message"), [
    (b"not a tarball at all", "not a readable .tar.gz"),
    (targz({"../escape.tf": b"x"}), "path escapes the configuration directory: ../escape.tf"),
    (targz({"README.md": b"hello"}), "no Terraform files"),
])
def test_it_refuses_a_bad_archive_with_the_services_message(alice, workspace, archive, message):
    before = ConfigurationVersion.objects.filter(workspace=workspace).count()
    response = login(alice).post(f"/workspaces/{workspace.id}/configuration/",
                                 {"archive": SimpleUploadedFile("config.tar.gz", archive)}, follow=True)
    assert "Configuration not uploaded:" in page(response) and message in page(response)
    assert ConfigurationVersion.objects.filter(workspace=workspace).count() == before


def test_it_refuses_uploads_to_bob_and_charlie(bob, charlie, workspace):
    archive = targz({"main.tf": b'resource "terraform_data" "x" {}\n'})
    before = ConfigurationVersion.objects.filter(workspace=workspace).count()
    for user, code in ((bob, 403), (charlie, 404)):
        response = login(user).post(f"/workspaces/{workspace.id}/configuration/",
                                    {"archive": SimpleUploadedFile("c.tar.gz", archive)})
        assert response.status_code == code
    assert ConfigurationVersion.objects.filter(workspace=workspace).count() == before


# State diff --------------------------------------------------------------------------------


def test_it_diffs_two_state_versions_with_sensitive_values_masked(alice, workspace):
    var = Variable(workspace=workspace, key="api_key", sensitive=True)
    var.set_value("var-secret-9f3a")
    var.save()
    add_state(workspace, 1, "first-password-1", "alpha")
    add_state(workspace, 2, "second-password-2", "beta var-secret-9f3a")
    response = login(alice).get(f"/workspaces/{workspace.id}/state/diff/?from=1&to=2")
    html = page(response)
    assert response.status_code == 200
    assert '-  "serial": 1,' in html and '+  "serial": 2,' in html
    assert '+                "name": "beta (sensitive)",' in html  # a sensitive variable's value, inside a string
    for secret in ("first-password-1", "second-password-2", "var-secret-9f3a"):
        assert secret not in html
    assert '"password": "(sensitive)"' in html


def test_it_refuses_a_state_diff_to_bob_and_charlie_and_bad_serials(alice, bob, charlie, workspace):
    add_state(workspace, 1, "first-password-1", "alpha")
    add_state(workspace, 2, "second-password-2", "beta")
    url = f"/workspaces/{workspace.id}/state/diff/?from=1&to=2"
    assert login(bob).get(url).status_code == 403  # `plan` may not read the state, masked or not
    assert login(charlie).get(url).status_code == 404
    response = login(alice).get(f"/workspaces/{workspace.id}/state/diff/?from=1&to=7")
    assert response.status_code == 400 and "is not a state version of this workspace" in page(response)
    assert login(alice).get(f"/workspaces/{workspace.id}/state/diff/?from=x&to=2").status_code == 400


# Looks -------------------------------------------------------------------------------------


def test_it_shows_statuses_in_words_and_times_exactly_on_hover(alice, workspace):
    run = run_create(workspace=workspace, operation="plan", actor=alice)
    Task.objects.filter(id=run.id).update(status=RunStatus.APPLY_PENDING)
    html = page(login(alice).get(f"/workspaces/{workspace.id}/"))
    assert 'class="status tone-wait status-apply_pending" data-status="apply_pending">apply pending</span>' in html
    assert '<time datetime="' in html and ' UTC">just now</time>' in html


def test_it_shows_tags_and_lets_an_admin_share_the_state_from_the_page(alice, bob, pool, workspace):
    consumer = make_workspace(pool=pool)
    Workspace.objects.filter(id=workspace.id).update(tags=["app"], tag_bindings={"env": "prod"})
    client = login(alice)
    shown = page(client.get(f"/workspaces/{workspace.id}/"))
    assert "<code>app</code>" in shown and "<code>env=prod</code>" in shown
    assert f'<option value="{consumer.id}">{consumer.name}</option>' in shown

    saved = client.post(f"/workspaces/{workspace.id}/sharing/", {"consumers": [str(consumer.id)]}, follow=True)
    assert f"may read this one's state and outputs: {consumer.name}." in page(saved)
    assert list(workspace.remote_state_consumers.all()) == [consumer]
    assert AuditEvent.objects.filter(action="workspace.remote_state_consumers").exists()
    # Someone without 'admin' on it: refused, nothing changed.
    refused = login(bob).post(f"/workspaces/{workspace.id}/sharing/", {"consumers": []})
    assert refused.status_code in (403, 404)
    assert list(workspace.remote_state_consumers.all()) == [consumer]
    # Cleared by an admin.
    client.post(f"/workspaces/{workspace.id}/sharing/", {})
    assert not workspace.remote_state_consumers.exists()
