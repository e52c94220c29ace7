"""The user REST API for workspaces, configurations, variables, runs, logs and state."""

from __future__ import annotations

import io
import os
import tarfile
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from agents_app.protocol import JobKind, JobStatus
from iacplatform import crypto
from tasks_app.dispatch.models import Job
from tasks_app.models import (
    AuditEvent,
    ConfigurationVersion,
    LogChunk,
    Plan,
    StateVersion,
    Task,
    Variable,
    Workspace,
)
from tasks_app.states import Operation, RunStatus, WarmupStatus
from tests.factories import DEMO_MAIN_TF, make_agent, make_pool, make_token, make_workspace

pytestmark = pytest.mark.django_db


# Helpers ------------------------------------------------------------------------------------


def tar_gz(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def file_entry(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def link_entry(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def upload(api: APIClient, ws: Workspace, body: bytes, content_type: str = "application/gzip"):
    return api.post(f"/api/v1/workspaces/{ws.id}/configuration-versions/", data=body, content_type=content_type)


def apply_pending_run(ws: Workspace, *, base_state_serial: int | None = None, **fields) -> Task:
    """A run that planned with changes and waits for Confirm, as the plan job leaves it."""
    task = Task.objects.create(
        workspace=ws,
        configuration_version=ws.configuration_versions.first(),
        operation=Operation.PLAN_AND_APPLY,
        status=RunStatus.APPLY_PENDING,
        plan_hash="a" * 64,
        has_changes=True,
        base_state_serial=base_state_serial,
        **fields,
    )
    Plan.objects.create(
        task=task, encrypted_data=crypto.encrypt(b"plan"), sha256="a" * 64, size=4, summary={"add": 1, "change": 0}
    )
    return task


def state_version(ws: Workspace, serial: int, content: bytes = b'{"secret": "s3cr3t-state"}') -> StateVersion:
    return StateVersion.objects.create(
        workspace=ws, serial=serial, lineage="lin-1", sha256="b" * 64, size=len(content),
        encrypted_data=crypto.encrypt(content),
    )


def queue(api: APIClient, ws: Workspace, operation: str, capture) -> dict:
    """Queue a run and return it as the API shows it afterwards. In a test the whole test is one
    transaction, so the queue start (an on_commit callback) runs when `capture` exits, after the
    POST has answered; in production it has run before the 201 is built."""
    with capture(execute=True):
        body = {"operation": operation, "message": "ci"}
        response = api.post(f"/api/v1/workspaces/{ws.id}/runs/", body, format="json")
    assert response.status_code == 201, response.json()
    return api.get(f"/api/v1/runs/{response.json()['id']}/").json()


# Authentication and body parsing ------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Token not-a-real-token"])
def test_it_answers_401_with_json_for_a_missing_or_unknown_token(db, header):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/workspaces/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert response.json()["detail"]


def test_it_answers_401_on_run_actions_without_a_token(workspace):
    task = apply_pending_run(workspace, base_state_serial=None)
    response = APIClient().post(f"/api/v1/runs/{task.id}/confirm/", {}, format="json")
    assert response.status_code == 401
    assert Task.objects.get(id=task.id).status == RunStatus.APPLY_PENDING


def test_it_refuses_a_malformed_json_body_with_400(api, pool):
    response = api.post("/api/v1/workspaces/", data='{"name": "x",', content_type="application/json")
    assert response.status_code == 400
    assert "JSON" in response.json()["detail"]
    assert not Workspace.objects.exists()


def test_it_refuses_a_form_encoded_body_with_415(api, pool):
    response = api.post("/api/v1/workspaces/", {"name": "web", "pool": pool.id})  # multipart
    assert response.status_code == 415


# Workspaces ---------------------------------------------------------------------------------


def test_it_creates_lists_and_reads_a_workspace(api, pool):
    response = api.post("/api/v1/workspaces/", {"name": "web", "pool": pool.id, "auto_apply": True}, format="json")
    assert response.status_code == 201, response.json()
    created = response.json()
    assert created["name"] == "web" and created["auto_apply"] is True and created["locked"] is False
    assert created["latest_configuration_version"] is None

    listed = api.get("/api/v1/workspaces/").json()
    assert [w["name"] for w in listed] == ["web"]
    assert api.get(f"/api/v1/workspaces/{created['id']}/").json()["pool"] == pool.id


def test_it_names_the_missing_or_invalid_workspace_fields(api, pool):
    make_pool()  # two pools and no IAC_DEFAULT_POOL: no default to pick
    response = api.post("/api/v1/workspaces/", {"name": "web"}, format="json")
    assert response.status_code == 400
    assert "pool" in response.json()["errors"]
    assert not Workspace.objects.filter(name="web").exists()

    response = api.post("/api/v1/workspaces/", {"name": "not a slug!", "pool": 999999}, format="json")
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"name", "pool"}


def test_a_workspace_without_a_pool_gets_the_only_pool(api, pool):
    response = api.post("/api/v1/workspaces/", {"name": "web"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["pool"] == pool.id


def test_a_workspace_without_a_pool_gets_the_pool_named_by_the_setting(api, pool, settings):
    other, _ = make_pool(name="shared")
    settings.IAC_DEFAULT_POOL = "shared"
    assert api.post("/api/v1/workspaces/", {"name": "web"}, format="json").json()["pool"] == other.id
    settings.IAC_DEFAULT_POOL = "gone"
    response = api.post("/api/v1/workspaces/", {"name": "web2"}, format="json")
    assert response.status_code == 400 and "gone" in response.json()["errors"]["pool"][0]


def test_a_team_member_defaults_to_the_only_pool_their_team_may_use(pool, charlie):
    from django.contrib.auth.models import Group, Permission

    make_pool()  # a pool charlie's team may not use
    team = Group.objects.create(name="builders")
    team.permissions.add(Permission.objects.get(codename="add_workspace"))
    charlie.groups.add(team)
    pool.teams.add(team)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {make_token(charlie)}")
    response = client.post("/api/v1/workspaces/", {"name": "web"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["pool"] == pool.id


def test_it_refuses_a_duplicate_workspace_name(api, workspace):
    response = api.post("/api/v1/workspaces/", {"name": workspace.name, "pool": workspace.pool_id}, format="json")
    assert response.status_code == 400
    assert "name" in response.json()["errors"]


def test_it_refuses_a_non_boolean_flag(api, workspace):
    response = api.patch(f"/api/v1/workspaces/{workspace.id}/", {"locked": "yes"}, format="json")
    assert response.status_code == 400
    assert "locked" in response.json()["errors"]
    assert Workspace.objects.get(id=workspace.id).locked is False


def test_it_shows_the_latest_configuration_version(api, workspace):
    latest = workspace.configuration_versions.order_by("-id").first()
    assert api.get(f"/api/v1/workspaces/{workspace.id}/").json()["latest_configuration_version"] == latest.id


def test_it_audits_lock_and_unlock_and_starts_pending_runs_on_unlock(
    api, alice, workspace, django_capture_on_commit_callbacks
):
    assert api.patch(f"/api/v1/workspaces/{workspace.id}/", {"locked": True}, format="json").status_code == 200
    run = queue(api, workspace, "plan", django_capture_on_commit_callbacks)
    # A locked workspace starts nothing and says why.
    assert run["status"] == RunStatus.PENDING
    assert run["waiting_reason"] == "pending: the workspace is locked"

    with django_capture_on_commit_callbacks(execute=True):
        response = api.patch(f"/api/v1/workspaces/{workspace.id}/", {"locked": False}, format="json")
    assert response.status_code == 200 and response.json()["locked"] is False
    assert Task.objects.get(id=run["id"]).status == RunStatus.PLAN_QUEUED

    actions = list(AuditEvent.objects.filter(object_type="workspace").order_by("id").values_list("action", "actor"))
    assert actions == [("workspace.lock", alice.id), ("workspace.unlock", alice.id)]


def test_it_audits_a_settings_change_but_no_lock_change_when_the_lock_is_left_alone(api, workspace):
    api.patch(f"/api/v1/workspaces/{workspace.id}/", {"auto_apply": True}, format="json")
    events = list(AuditEvent.objects.filter(object_type="workspace").values_list("action", "data"))
    assert events == [("workspace.update", {"auto_apply": "True"})]


def test_it_refuses_to_delete_a_workspace_with_an_active_run(api, workspace):
    task = apply_pending_run(workspace)
    response = api.delete(f"/api/v1/workspaces/{workspace.id}/")
    assert response.status_code == 409
    assert str(task.id) in response.json()["detail"]
    assert Workspace.objects.filter(id=workspace.id).exists()


def test_it_deletes_a_workspace_whose_runs_are_finished(api, workspace):
    apply_pending_run(workspace)
    Task.objects.filter(workspace=workspace).update(status=RunStatus.DISCARDED)
    assert api.delete(f"/api/v1/workspaces/{workspace.id}/").status_code == 204
    assert not Workspace.objects.filter(id=workspace.id).exists()


def test_it_does_not_accept_put_on_a_workspace(api, workspace):
    response = api.put(f"/api/v1/workspaces/{workspace.id}/", {"name": "x", "pool": workspace.pool_id}, format="json")
    assert response.status_code == 405


# Configuration versions ---------------------------------------------------------------------


def test_it_accepts_files_as_json(api, workspace):
    response = api.post(
        f"/api/v1/workspaces/{workspace.id}/configuration-versions/",
        {"files": {"main.tf": DEMO_MAIN_TF, "modules/x/vars.tf": ""}},
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["files"] == ["main.tf", "modules/x/vars.tf"]
    assert len(body["sha256"]) == 64 and body["size"] > 0

    listed = api.get(f"/api/v1/workspaces/{workspace.id}/configuration-versions/").json()["results"]
    assert listed[0]["id"] == body["id"] and len(listed) == 2
    assert api.get(f"/api/v1/workspaces/{workspace.id}/").json()["latest_configuration_version"] == body["id"]


@pytest.mark.parametrize(
    "content_type", ["application/gzip", "application/x-gzip", "application/x-tar", "application/octet-stream"]
)
def test_it_accepts_a_tar_gz_body(api, workspace, content_type):
    body = tar_gz(file_entry("main.tf", DEMO_MAIN_TF.encode()), file_entry("./vars/extra.tf", b""))
    response = upload(api, workspace, body, content_type)
    assert response.status_code == 201, response.json()
    assert response.json()["files"] == ["main.tf", "vars/extra.tf"]


def test_it_names_the_files_field_when_json_is_missing_it(api, workspace):
    before = ConfigurationVersion.objects.count()
    response = api.post(f"/api/v1/workspaces/{workspace.id}/configuration-versions/", {}, format="json")
    assert response.status_code == 400
    assert "files" in response.json()["errors"]
    assert ConfigurationVersion.objects.count() == before


@pytest.mark.parametrize(
    "files, words",
    [
        ({"../outside.tf": "x"}, "escapes"),
        ({"/etc/main.tf": "x"}, "absolute"),
        ({"README.md": "no terraform"}, "no Terraform files"),
        ({}, "non-empty"),
        ({"main.tf": 1}, "must be a string"),
    ],
)
def test_it_refuses_bad_json_files_and_writes_nothing(api, workspace, files, words):
    before = ConfigurationVersion.objects.count()
    response = api.post(f"/api/v1/workspaces/{workspace.id}/configuration-versions/", {"files": files}, format="json")
    assert response.status_code == 400
    assert words in response.json()["detail"]
    assert ConfigurationVersion.objects.count() == before


@pytest.mark.parametrize(
    "members, words",
    [
        ([file_entry("main.tf", b""), file_entry("../evil.tf", b"x")], "escapes"),
        ([file_entry("main.tf", b""), file_entry("a/../../evil.tf", b"x")], "escapes"),
        ([file_entry("/etc/cron.d/evil.tf", b"x")], "absolute"),
        ([file_entry("main.tf", b""), link_entry("passwd.tf", "/etc/passwd", tarfile.SYMTYPE)], "outside"),
        ([file_entry("main.tf", b""), link_entry("up.tf", "../../secret", tarfile.SYMTYPE)], "outside"),
        ([file_entry("main.tf", b""), link_entry("hard.tf", "../secret", tarfile.LNKTYPE)], "outside"),
        ([file_entry("main.tf", b""), link_entry("hard.tf", "/etc/shadow", tarfile.LNKTYPE)], "outside"),
    ],
)
def test_it_refuses_archives_that_reach_outside_and_writes_nothing(api, workspace, members, words):
    before = ConfigurationVersion.objects.count()
    response = upload(api, workspace, tar_gz(*members))
    assert response.status_code == 400
    assert words in response.json()["detail"]
    assert ConfigurationVersion.objects.count() == before


def test_it_refuses_a_body_that_is_not_gzip(api, workspace):
    before = ConfigurationVersion.objects.count()
    response = upload(api, workspace, b"resource \"x\" \"y\" {}\n" * 10)
    assert response.status_code == 400
    assert "not a readable .tar.gz" in response.json()["detail"]
    assert "archive" in response.json()["errors"]
    assert ConfigurationVersion.objects.count() == before


def test_it_refuses_an_empty_archive_body(api, workspace):
    response = upload(api, workspace, b"")
    assert response.status_code == 400
    assert "empty" in response.json()["detail"]


def test_it_refuses_an_oversize_archive(api, workspace, settings):
    settings.IAC_MAX_CONFIG_BYTES = 1000
    before = ConfigurationVersion.objects.count()
    # Random bytes do not compress: the archive itself is over the limit.
    body = tar_gz(file_entry("main.tf", b""), file_entry("blob.tf", os.urandom(5000)))
    response = upload(api, workspace, body)
    assert response.status_code == 400
    assert "limit is 1000" in response.json()["detail"]
    assert ConfigurationVersion.objects.count() == before


def test_it_refuses_an_archive_that_unpacks_over_the_limit(api, workspace, settings):
    settings.IAC_MAX_CONFIG_BYTES = 1000
    body = tar_gz(file_entry("main.tf", b"#" * 5000))  # compresses to far less than 1000 bytes
    assert len(body) < 1000
    response = upload(api, workspace, body)
    assert response.status_code == 400
    assert "exceeds 1000 bytes" in response.json()["detail"]
    assert ConfigurationVersion.objects.filter(workspace=workspace).count() == 1


# Variables ----------------------------------------------------------------------------------


def test_it_creates_and_lists_a_plain_variable(api, workspace):
    response = api.post(
        f"/api/v1/workspaces/{workspace.id}/variables/", {"key": "greeting", "value": " hi "}, format="json"
    )
    assert response.status_code == 201, response.json()
    assert response.json() == {
        "id": response.json()["id"], "key": "greeting", "value": " hi ", "category": "terraform", "sensitive": False,
    }
    assert api.get(f"/api/v1/workspaces/{workspace.id}/variables/").json()[0]["value"] == " hi "


def test_it_never_returns_a_sensitive_value_and_stores_it_encrypted(api, workspace):
    url = f"/api/v1/workspaces/{workspace.id}/variables/"
    response = api.post(
        url, {"key": "AWS_SECRET_ACCESS_KEY", "value": "hunter2-secret", "category": "env", "sensitive": True},
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["value"] is None
    var_id = response.json()["id"]

    assert "hunter2-secret" not in api.get(url).content.decode()
    assert "hunter2-secret" not in api.get(f"/api/v1/variables/{var_id}/").content.decode()
    patched = api.patch(f"/api/v1/variables/{var_id}/", {"value": "rotated-secret"}, format="json")
    assert patched.json()["value"] is None

    stored = Variable.objects.get(id=var_id)
    assert stored.plain_value == ""
    assert b"rotated-secret" not in bytes(stored.encrypted_value)
    assert crypto.decrypt(bytes(stored.encrypted_value)) == b"rotated-secret"


def test_it_encrypts_the_existing_value_when_a_variable_becomes_sensitive(api, workspace):
    url = f"/api/v1/workspaces/{workspace.id}/variables/"
    var = api.post(url, {"key": "token", "value": "abc"}, format="json").json()
    response = api.patch(f"/api/v1/variables/{var['id']}/", {"sensitive": True}, format="json")
    assert response.status_code == 200 and response.json()["value"] is None
    stored = Variable.objects.get(id=var["id"])
    assert stored.plain_value == "" and stored.value == "abc"


def test_it_refuses_to_make_a_sensitive_variable_readable_again(api, workspace):
    var = api.post(
        f"/api/v1/workspaces/{workspace.id}/variables/", {"key": "pw", "value": "x", "sensitive": True}, format="json"
    ).json()
    response = api.patch(f"/api/v1/variables/{var['id']}/", {"sensitive": False}, format="json")
    assert response.status_code == 400
    assert "sensitive" in response.json()["errors"]
    assert Variable.objects.get(id=var["id"]).sensitive is True


def test_it_refuses_a_duplicate_variable_key(api, workspace):
    url = f"/api/v1/workspaces/{workspace.id}/variables/"
    api.post(url, {"key": "region", "value": "eu"}, format="json")
    response = api.post(url, {"key": "region", "value": "us"}, format="json")
    assert response.status_code == 400
    assert "key" in response.json()["errors"]
    assert Variable.objects.filter(workspace=workspace).count() == 1
    # The same key as an environment variable is a different variable.
    assert api.post(url, {"key": "region", "value": "us", "category": "env"}, format="json").status_code == 201


def test_it_refuses_renaming_a_variable_onto_an_existing_key(api, workspace):
    url = f"/api/v1/workspaces/{workspace.id}/variables/"
    api.post(url, {"key": "a", "value": "1"}, format="json")
    b = api.post(url, {"key": "b", "value": "2"}, format="json").json()
    response = api.patch(f"/api/v1/variables/{b['id']}/", {"key": "a"}, format="json")
    assert response.status_code == 400 and "key" in response.json()["errors"]


@pytest.mark.parametrize("key", ["1st", "has-dash", "has space", "", "naïve"])
def test_it_refuses_a_key_that_is_not_an_identifier(api, workspace, key):
    response = api.post(f"/api/v1/workspaces/{workspace.id}/variables/", {"key": key, "value": "x"}, format="json")
    assert response.status_code == 400
    assert "key" in response.json()["errors"]


def test_it_names_missing_variable_fields(api, workspace):
    response = api.post(f"/api/v1/workspaces/{workspace.id}/variables/", {"category": "nope"}, format="json")
    assert response.status_code == 400
    assert {"key", "value", "category"} <= set(response.json()["errors"])


def test_it_deletes_a_variable(api, workspace):
    var = api.post(f"/api/v1/workspaces/{workspace.id}/variables/", {"key": "k", "value": "v"}, format="json").json()
    assert api.delete(f"/api/v1/variables/{var['id']}/").status_code == 204
    assert not Variable.objects.filter(id=var["id"]).exists()


# Runs ---------------------------------------------------------------------------------------


def test_it_queues_a_run_that_waits_for_an_agent_with_a_plan_job(api, workspace, django_capture_on_commit_callbacks):
    run = queue(api, workspace, "plan", django_capture_on_commit_callbacks)
    assert run["status"] == RunStatus.PLAN_QUEUED and run["operation"] == "plan"
    assert run["message"] != "ci"  # the client's `message` is ignored: the platform writes it
    jobs = list(Job.objects.filter(task_id=run["id"]).values_list("kind", "status"))
    assert jobs == [(JobKind.PLAN, JobStatus.QUEUED)]
    assert [(e["from_status"], e["to_status"]) for e in run["events"]] == [("", "pending"), ("pending", "plan_queued")]
    assert run["waiting_reason"].startswith(f"queued: no agent of pool '{workspace.pool.name}' is online (gives up at ")
    assert run["events"][0]["actor"] == "alice"


@pytest.mark.django_db(transaction=True)
def test_it_answers_the_queue_post_with_the_run_already_queued_for_an_agent(api, workspace):
    # Real commits here: the 201 itself shows the started run, not a stale `pending`.
    response = api.post(f"/api/v1/workspaces/{workspace.id}/runs/", {"operation": "plan_and_apply"}, format="json")
    assert response.status_code == 201
    assert response.json()["status"] == RunStatus.PLAN_QUEUED
    assert Job.objects.filter(task_id=response.json()["id"], kind=JobKind.PLAN, status=JobStatus.QUEUED).count() == 1


@pytest.mark.parametrize("body", [{}, {"operation": "destroy"}, {"operation": None}])
def test_it_names_operation_when_it_is_missing_or_invalid(api, workspace, body):
    response = api.post(f"/api/v1/workspaces/{workspace.id}/runs/", body, format="json")
    assert response.status_code == 400
    assert "operation" in response.json()["errors"]
    assert not Task.objects.exists()


def test_it_answers_409_for_a_run_on_a_workspace_without_configuration(api, pool):
    ws = make_workspace(pool=pool)
    response = api.post(f"/api/v1/workspaces/{ws.id}/runs/", {"operation": "plan"}, format="json")
    assert response.status_code == 409
    assert "no configuration" in response.json()["detail"]


def test_it_answers_404_for_an_unknown_workspace(api, db):
    assert api.post("/api/v1/workspaces/999999/runs/", {"operation": "plan"}, format="json").status_code == 404
    assert api.get("/api/v1/workspaces/999999/variables/").status_code == 404


def test_it_lets_plan_only_runs_pass_while_a_second_applyable_run_waits(
    api, workspace, django_capture_on_commit_callbacks
):
    first = queue(api, workspace, "plan_and_apply", django_capture_on_commit_callbacks)
    second = queue(api, workspace, "plan_and_apply", django_capture_on_commit_callbacks)
    speculative = queue(api, workspace, "plan", django_capture_on_commit_callbacks)

    assert first["status"] == RunStatus.PLAN_QUEUED
    assert second["status"] == RunStatus.PENDING
    assert second["waiting_reason"] == f"pending: run #{first['id']} (plan_queued) holds the workspace"
    assert speculative["status"] == RunStatus.PLAN_QUEUED
    assert not Job.objects.filter(task_id=second["id"]).exists()

    listed = api.get(f"/api/v1/workspaces/{workspace.id}/runs/").json()["results"]
    assert [r["id"] for r in listed] == [speculative["id"], second["id"], first["id"]]  # newest first

    url = f"/api/v1/workspaces/{workspace.id}/runs/"
    assert [r["id"] for r in api.get(f"{url}?status=pending").json()["results"]] == [second["id"]]
    both = api.get(f"{url}?status=pending&status=plan_queued&page_size=2").json()
    assert [r["id"] for r in both["results"]] == [speculative["id"], second["id"]]
    rest = api.get(both["next"]).json()
    assert [r["id"] for r in rest["results"]] == [first["id"]] and rest["next"] is None
    assert api.get(f"{url}?needs_attention=true").json()["results"] == []
    Task.objects.filter(id=first["id"]).update(status=RunStatus.APPLY_PENDING)
    assert [r["id"] for r in api.get(f"{url}?needs_attention=true").json()["results"]] == [first["id"]]
    response = api.get(f"{url}?status=bogus")
    assert response.status_code == 400 and "status" in response.json()["errors"]


def test_it_shows_plan_warmup_and_apply_latency_on_a_run(api, workspace, pool):
    agent, _ = make_agent(pool=pool, name="agent-7")
    confirmed = timezone.now()
    task = apply_pending_run(
        workspace,
        warmup_status=WarmupStatus.READY,
        confirmed_at=confirmed,
        apply_started_at=confirmed + timedelta(milliseconds=250),
    )
    agent.slots.filter(index=0).update(state="reserved", task=task)
    run = api.get(f"/api/v1/runs/{task.id}/").json()
    assert run["plan_summary"] == {"add": 1, "change": 0}
    assert run["plan_hash"] == "a" * 64 and run["has_changes"] is True
    assert run["warmup_status"] == "ready" and run["warmup_agent"] == "agent-7"
    assert run["confirm_to_apply_start_ms"] == 250
    assert run["confirm_to_first_log_ms"] is None  # no apply log yet
    assert run["waiting_reason"] == "apply_pending: waiting for confirmation (warm on agent-7 slot 0)"
    assert "encrypted_data" not in str(run)


def test_it_shows_null_plan_summary_before_the_plan(api, workspace, django_capture_on_commit_callbacks):
    run = queue(api, workspace, "plan", django_capture_on_commit_callbacks)
    detail = api.get(f"/api/v1/runs/{run['id']}/").json()
    assert detail["plan_summary"] is None and detail["warmup_agent"] is None


def test_it_answers_404_for_an_unknown_run(api, db):
    assert api.get("/api/v1/runs/999999/").status_code == 404
    assert api.post("/api/v1/runs/999999/confirm/", {}, format="json").status_code == 404


# Confirm, discard, cancel, prepare ----------------------------------------------------------


def test_it_confirms_once_creating_exactly_one_apply_job(api, alice, workspace):
    state_version(workspace, 3)
    task = apply_pending_run(workspace, base_state_serial=3)
    response = api.post(f"/api/v1/runs/{task.id}/confirm/", {"comment": "ship it"}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == RunStatus.APPLY_QUEUED
    assert response.json()["confirmed_at"] is not None

    again = api.post(f"/api/v1/runs/{task.id}/confirm/", {}, format="json")
    assert again.status_code == 409
    assert "apply_pending" in again.json()["detail"]
    assert Job.objects.filter(task=task, kind=JobKind.APPLY).count() == 1
    assert AuditEvent.objects.filter(action="run.confirm", actor=alice, data__comment="ship it").count() == 1


def test_it_confirms_with_an_empty_body(api, workspace):
    task = apply_pending_run(workspace, base_state_serial=None)  # no state yet on either side
    response = api.post(f"/api/v1/runs/{task.id}/confirm/")
    assert response.status_code == 200, response.json()


def test_it_answers_409_when_confirming_a_run_not_waiting_for_confirmation(
    api, workspace, django_capture_on_commit_callbacks
):
    run = queue(api, workspace, "plan_and_apply", django_capture_on_commit_callbacks)
    response = api.post(f"/api/v1/runs/{run['id']}/confirm/", {}, format="json")
    assert response.status_code == 409
    assert "plan_queued" in response.json()["detail"]
    assert not Job.objects.filter(task_id=run["id"], kind=JobKind.APPLY).exists()


def test_it_refuses_a_stale_plan_with_409_and_discards_the_run(api, workspace):
    state_version(workspace, 1)
    task = apply_pending_run(workspace, base_state_serial=1)
    state_version(workspace, 2)  # someone applied in between (e.g. a local terraform apply)

    response = api.post(f"/api/v1/runs/{task.id}/confirm/", {}, format="json")
    assert response.status_code == 409
    assert "stale plan" in response.json()["detail"]

    task.refresh_from_db()
    assert task.status == RunStatus.DISCARDED
    assert "stale" in task.message
    assert not Job.objects.filter(task=task, kind=JobKind.APPLY).exists()
    run = api.get(f"/api/v1/runs/{task.id}/").json()
    assert run["status"] == "discarded" and "stale" in run["events"][-1]["message"]


def test_it_discards_a_run_waiting_for_confirmation(api, workspace):
    task = apply_pending_run(workspace)
    response = api.post(f"/api/v1/runs/{task.id}/discard/", {"comment": "not today"}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == RunStatus.DISCARDED and response.json()["message"] == "not today"
    assert api.post(f"/api/v1/runs/{task.id}/discard/").status_code == 409


def test_it_cancels_a_queued_run_and_drops_its_job(api, workspace, django_capture_on_commit_callbacks):
    run = queue(api, workspace, "plan", django_capture_on_commit_callbacks)
    response = api.post(f"/api/v1/runs/{run['id']}/cancel/", {"force": True}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == RunStatus.CANCELLED
    assert Job.objects.get(task_id=run["id"]).status == JobStatus.CANCELLED
    assert api.post(f"/api/v1/runs/{run['id']}/cancel/").status_code == 409  # already final


def test_it_asks_the_agent_to_stop_a_running_job(api, workspace):
    task = apply_pending_run(workspace)
    Task.objects.filter(id=task.id).update(status=RunStatus.APPLYING)
    job = Job.objects.create(task=task, pool=workspace.pool, kind=JobKind.APPLY, status=JobStatus.RUNNING)
    response = api.post(f"/api/v1/runs/{task.id}/cancel/", {"force": True}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == RunStatus.APPLYING  # until terraform stops
    job.refresh_from_db()
    assert job.cancel_requested and job.force_cancel


@pytest.mark.parametrize("force", ["yes", "true", 1, None])
def test_it_refuses_a_non_boolean_force(api, workspace, force):
    task = apply_pending_run(workspace)
    response = api.post(f"/api/v1/runs/{task.id}/cancel/", {"force": force}, format="json")
    assert response.status_code == 400
    assert "force" in response.json()["errors"]
    assert Task.objects.get(id=task.id).status == RunStatus.APPLY_PENDING


def test_it_queues_a_warmup_when_the_confirm_dialog_opens_on_a_cold_run(api, workspace):
    task = apply_pending_run(workspace, warmup_status=WarmupStatus.NONE)
    response = api.post(f"/api/v1/runs/{task.id}/prepare/")
    assert response.status_code == 200
    assert response.json()["id"] == task.id
    assert Job.objects.filter(task=task, kind=JobKind.WARMUP, status=JobStatus.QUEUED).count() == 1
    # Opening the dialog again does not pile up warmups.
    api.post(f"/api/v1/runs/{task.id}/prepare/")
    assert Job.objects.filter(task=task, kind=JobKind.WARMUP).count() == 1


# Logs ---------------------------------------------------------------------------------------


def logged_run(ws: Workspace, *chunks: str, status: RunStatus = RunStatus.PLANNING) -> Task:
    task = Task.objects.create(
        workspace=ws, configuration_version=ws.configuration_versions.first(), operation=Operation.PLAN, status=status
    )
    job = Job.objects.create(task=task, pool=ws.pool, kind=JobKind.PLAN, status=JobStatus.RUNNING)
    offset = 0
    for seq, text in enumerate(chunks):
        LogChunk.objects.create(task=task, job=job, seq=seq, offset=offset, text=text)
        offset += len(text.encode())
    return task


def test_it_reads_the_log_from_an_offset(api, workspace):
    task = logged_run(workspace, "Initializing...\n", "Plan: 1 to add.\n")
    whole = api.get(f"/api/v1/runs/{task.id}/logs/").json()
    assert whole == {"text": "Initializing...\nPlan: 1 to add.\n", "next_offset": 32, "complete": False,
                     "status": task.status}

    middle = api.get(f"/api/v1/runs/{task.id}/logs/?offset=22").json()  # inside the second chunk
    assert middle["text"] == "1 to add.\n" and middle["next_offset"] == 32

    caught_up = api.get(f"/api/v1/runs/{task.id}/logs/?offset=32").json()
    assert caught_up == {"text": "", "next_offset": 32, "complete": False, "status": task.status}


def test_it_counts_the_offset_in_bytes(api, workspace):
    task = logged_run(workspace, "héllo\n", "wörld\n")  # 7 bytes each
    response = api.get(f"/api/v1/runs/{task.id}/logs/?offset=7").json()
    assert response["text"] == "wörld\n" and response["next_offset"] == 14


def test_it_marks_the_log_complete_once_the_run_is_final(api, workspace):
    task = logged_run(workspace, "done\n", status=RunStatus.PLANNED)
    assert api.get(f"/api/v1/runs/{task.id}/logs/?offset=0").json()["complete"] is True


@pytest.mark.parametrize("offset", ["-1", "abc", "1.5"])
def test_it_refuses_a_bad_log_offset(api, workspace, offset):
    task = logged_run(workspace, "x\n")
    response = api.get(f"/api/v1/runs/{task.id}/logs/", {"offset": offset})
    assert response.status_code == 400
    assert "offset" in response.json()["errors"]


# State versions -----------------------------------------------------------------------------


def test_it_lists_state_versions_without_their_content(api, workspace):
    task = apply_pending_run(workspace)
    state_version(workspace, 1)
    StateVersion.objects.filter(serial=1).update(task=task)
    state_version(workspace, 2)
    response = api.get(f"/api/v1/workspaces/{workspace.id}/state-versions/")
    assert response.status_code == 200
    rows = response.json()["results"]
    assert [(r["serial"], r["task"]) for r in rows] == [(2, None), (1, task.id)]
    assert rows[0]["lineage"] == "lin-1" and rows[0]["size"] > 0
    assert "s3cr3t-state" not in response.content.decode()


# Schema -------------------------------------------------------------------------------------


def test_it_serves_the_openapi_schema_with_the_run_actions(api, db):
    response = api.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/api/v1/runs/{id}/confirm/" in paths
    assert "/api/v1/workspaces/{workspace_id}/configuration-versions/" in paths
    assert "/api/v1/pools/{id}/agents/" in paths


def test_it_lets_another_signed_in_user_use_the_api(charlie, workspace):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {make_token(charlie)}")
    assert client.get("/api/v1/workspaces/").status_code == 200



def test_a_run_before_any_apply_has_a_null_apply_path(api, workspace):
    run = api.post(f"/api/v1/workspaces/{workspace.id}/runs/", {"operation": "plan"}, format="json").json()
    assert run["apply_path"] is None


def test_an_unknown_api_url_answers_the_json_error_shape(api):
    response = api.get("/api/v1/runs/-1/")
    assert response.status_code == 404
    assert response.json()["detail"].startswith("no such URL")


@pytest.mark.parametrize("body", [{"name": 7}, {"name": "web", "terraform_version": 1}])
def test_string_fields_take_only_strings(api, pool, body):
    response = api.post("/api/v1/workspaces/", {"pool": pool.id, **body}, format="json")
    assert response.status_code == 400
    assert not Workspace.objects.exists()


def test_the_schema_documents_every_error_with_one_shape_and_the_enforced_constraints(api):
    import yaml

    schema = yaml.safe_load(api.get("/api/schema/").content)
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for code in ("400", "401", "403", "404"):
                content = operation["responses"][code]["content"]["application/json"]["schema"]
                assert content == {"$ref": "#/components/schemas/Error"}, (method, path, code)
    logs = schema["paths"]["/api/v1/runs/{id}/logs/"]["get"]["parameters"]
    assert next(p for p in logs if p["name"] == "offset")["schema"]["minimum"] == 0
    run = schema["components"]["schemas"]["Run"]["properties"]
    assert run["apply_path"]["nullable"] is True
    comment = schema["components"]["schemas"]["RunConfirmRequest"]["properties"]["comment"]
    assert comment["pattern"] == "^[^\\u0000]*$"
    links = schema["paths"]["/api/v1/workspaces/{workspace_id}/runs/"]["post"]["responses"]["201"]["links"]
    assert links["ConfirmRun"] == {"operationId": "v1_runs_confirm_create", "parameters": {"id": "$response.body#/id"}}


def test_list_parameters_are_checked_not_ignored_nor_a_server_error(api, workspace):
    assert api.get(f"/api/v1/workspaces/{workspace.id}/runs/?page_size=0").status_code == 400
    assert api.get(f"/api/v1/workspaces/{workspace.id}/runs/?page_size=x").status_code == 400
    assert api.get("/api/v1/audit-events/?object_type=a%00b").status_code == 400
    assert api.get("/api/v1/audit-events/?page_size=201").status_code == 400


def test_a_run_wait_answers_at_once_when_the_status_is_already_reached(api, workspace):
    run = api.post(f"/api/v1/workspaces/{workspace.id}/runs/", {"operation": "plan"}, format="json").json()
    started = time.monotonic()
    response = api.get(f"/api/v1/runs/{run['id']}/?wait=5&until={run['status']}&until=errored")
    assert response.status_code == 200 and response.json()["status"] == run["status"]
    assert time.monotonic() - started < 2


def test_a_run_wait_answers_with_the_whole_run_though_it_checks_only_the_status_while_it_waits(api, workspace):
    """The checks while a long-poll waits read the run's status only (`long_poll_probe`); the
    answer, at once or at the end of the wait, is the whole run."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    run = api.post(f"/api/v1/workspaces/{workspace.id}/runs/", {"operation": "plan"}, format="json").json()
    whole = api.get(f"/api/v1/runs/{run['id']}/").json()
    reached = api.get(f"/api/v1/runs/{run['id']}/?wait=5&until={run['status']}").json()
    with CaptureQueriesContext(connection) as waited:
        timed_out = api.get(f"/api/v1/runs/{run['id']}/?wait=0.3&until=applied").json()
    for answer in (reached, timed_out):
        assert set(answer) == set(whole) and answer["id"] == run["id"] and answer["events"] == whole["events"]
    # One check of the status (the probe), then the whole view once for the answer: the run's
    # events are read once, by the answer.
    assert len([q for q in waited.captured_queries if 'FROM "tasks_app_taskevent"' in q["sql"]]) == 1


@pytest.mark.parametrize("query", ["wait=61", "wait=-1", "wait=x", "until=bogus"])
def test_a_run_wait_refuses_bad_parameters(api, workspace, query):
    run = api.post(f"/api/v1/workspaces/{workspace.id}/runs/", {"operation": "plan"}, format="json").json()
    response = api.get(f"/api/v1/runs/{run['id']}/?{query}")
    assert response.status_code == 400


def test_a_run_wait_for_an_unknown_run_is_a_404_at_once(api):
    assert api.get("/api/v1/runs/999999/?wait=5&until=applied").status_code == 404


def test_only_a_get_waits(api, workspace):
    run = api.post(f"/api/v1/workspaces/{workspace.id}/runs/", {"operation": "plan"}, format="json").json()
    for url in (f"/api/v1/runs/{run['id']}/?wait=5&until=applied", f"/api/v1/runs/{run['id']}/logs/?wait=5"):
        started = time.monotonic()
        assert api.options(url).status_code == 200
        assert time.monotonic() - started < 2


def test_a_run_takes_plan_options_that_reach_the_agents_payload(api, workspace, pool, django_capture_on_commit_callbacks):
    from tasks_app.dispatch import agent_reports

    agent, _ = make_agent(pool=pool)
    with django_capture_on_commit_callbacks(execute=True):
        run = api.post(f"/api/v1/workspaces/{workspace.id}/runs/", {
            "operation": "plan", "mode": "destroy", "targets": ['module.net.aws_subnet.a["x y"]', "terraform_data.b"],
        }, format="json").json()
    assert (run["plan_mode"], run["plan_targets"], run["plan_replace"]) == (
        "destroy", ['module.net.aws_subnet.a["x y"]', "terraform_data.b"], [])
    [job] = agent_reports.agent_claim(agent_id=agent.id, limit=1)
    assert job["plan_options"] == {"mode": "destroy", "targets": ['module.net.aws_subnet.a["x y"]', "terraform_data.b"],
                                   "replace": []}


@pytest.mark.parametrize("body", [
    {"mode": "apply"},
    {"targets": ["-destroy"]},  # an option, not an address
    {"targets": ["a\nb"]},
    {"targets": [""]},
    {"targets": "terraform_data.a"},
    {"mode": "refresh_only", "replace": ["terraform_data.a"]},
    {"mode": "destroy", "replace": ["terraform_data.a"]},
])
def test_bad_plan_options_are_refused_and_queue_nothing(api, workspace, body):
    response = api.post(f"/api/v1/workspaces/{workspace.id}/runs/", {"operation": "plan", **body}, format="json")
    assert response.status_code == 400, response.json()
    assert not Task.objects.filter(workspace=workspace).exists()


def test_the_agent_turns_plan_options_into_terraform_arguments():
    from agents_app.agent.jobs import plan_option_args
    from agents_app.protocol import PlanOptions

    assert plan_option_args(PlanOptions()) == []
    assert plan_option_args(PlanOptions(mode="refresh_only")) == ["-refresh-only"]
    assert plan_option_args(PlanOptions(mode="destroy", targets=["a.b", "c.d[0]"])) == [
        "-destroy", "-target=a.b", "-target=c.d[0]"]
    assert plan_option_args(PlanOptions(replace=["a.b"])) == ["-replace=a.b"]


def test_outputs_show_the_latest_state_with_sensitive_values_masked(api, workspace, charlie):
    assert api.get(f"/api/v1/workspaces/{workspace.id}/outputs/").json() == []
    state_version(workspace, 1, b'{"outputs": {"old": {"value": 1, "type": "number"}}}')
    state_version(workspace, 2, b'{"outputs": {"url": {"value": "https://x", "type": "string"}, '
                                b'"password": {"value": "hunter2", "type": "string", "sensitive": true}}}')
    response = api.get(f"/api/v1/workspaces/{workspace.id}/outputs/")
    assert response.json() == [
        {"name": "password", "sensitive": True, "type": "string", "value": None},
        {"name": "url", "sensitive": False, "type": "string", "value": "https://x"},
    ]
    assert "hunter2" not in response.content.decode()
    outsider = APIClient()
    outsider.credentials(HTTP_AUTHORIZATION=f"Token {make_token(charlie)}")
    assert outsider.get(f"/api/v1/workspaces/{workspace.id}/outputs/").status_code == 404
