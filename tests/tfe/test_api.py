"""The TFE API v2 through Django's test client: the JSON:API shapes terraform and go-tfe
read, the signed URLs, permissions and refusals. (tests/tfe/test_cli.py drives the real
terraform CLI against a live server.)"""

from __future__ import annotations

import io
import json
import tarfile
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.core import signing as django_signing
from django.test import Client
from django.utils import timezone

from tasks_app.models import AccessLevel, ConfigurationUpload, Task, Workspace, WorkspaceAccess
from tasks_app.tfe import signing
from tests.factories import DEMO_MAIN_TF, make_token

pytestmark = pytest.mark.django_db

JSONAPI = "application/vnd.api+json"


class Tfe:
    def __init__(self, token: str | None) -> None:
        self.client = Client()
        self.headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}

    def get(self, path: str, **params):
        return self.client.get(f"/api/v2/{path}", params, **self.headers)

    def send(self, method: str, path: str, doc=None, raw: bytes | None = None):
        data = raw if raw is not None else json.dumps(doc) if doc is not None else ""
        return getattr(self.client, method)(f"/api/v2/{path}", data=data, content_type=JSONAPI, **self.headers)


def archive(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


@pytest.fixture
def tfe(alice) -> Tfe:
    return Tfe(make_token(alice))


@pytest.fixture
def bob(db, workspace) -> User:
    """A team member with `plan` on the workspace."""
    bob = User.objects.create_user("bob", password="bob-password-1")
    team = Group.objects.create(name="planners")
    bob.groups.add(team)
    WorkspaceAccess.objects.create(workspace=workspace, team=team, level=AccessLevel.PLAN)
    return bob


def errors(response) -> list[dict]:
    return response.json()["errors"]


def test_it_answers_ping_with_the_api_version_terraform_needs(client):
    response = client.get("/api/v2/ping")
    assert response.status_code == 204
    assert response["TFP-API-Version"] == "2.5"


def test_it_offers_service_discovery(client):
    services = client.get("/.well-known/terraform.json").json()
    assert services["tfe.v2"] == "/api/v2/" and services["state.v2"] == "/api/v2/"


def test_it_refuses_a_missing_or_wrong_token_with_a_jsonapi_401(alice):
    for tfe in (Tfe(None), Tfe("not-a-token")):
        response = tfe.get("organizations/iac/entitlement-set")
        assert response.status_code == 401
        assert response["TFP-API-Version"] == "2.5"
        assert errors(response)[0]["status"] == "401"


def test_it_is_one_organization(tfe, settings):
    assert tfe.get("organizations/iac/entitlement-set").json()["data"]["attributes"]["operations"] is True
    assert tfe.get("organizations/other/entitlement-set").status_code == 404
    settings.IAC_ORGANIZATION = "acme"
    assert tfe.get("organizations/acme").json()["data"]["id"] == "acme"
    assert tfe.get("organizations/iac").status_code == 404


def test_it_reads_a_workspace_by_name_and_by_id(tfe, workspace):
    by_name = tfe.get(f"organizations/iac/workspaces/{workspace.name}").json()["data"]
    assert by_name["id"] == f"ws-{workspace.id}"
    assert by_name["attributes"]["execution-mode"] == "remote"
    assert by_name["attributes"]["permissions"]["can-queue-apply"] is True
    assert tfe.get(f"workspaces/ws-{workspace.id}").json()["data"]["attributes"]["name"] == workspace.name
    assert tfe.get("organizations/iac/workspaces/nope").status_code == 404
    assert tfe.get("workspaces/ws-999999").status_code == 404
    assert tfe.get("workspaces/999").status_code == 404


def test_it_creates_a_workspace_on_the_default_pool_and_ignores_the_clis_version(tfe, pool):
    created = tfe.send("post", "organizations/iac/workspaces",
                       {"data": {"type": "workspaces", "attributes": {"name": "network-prod"}}})
    assert created.status_code == 201, created.content
    ws = Workspace.objects.get(name="network-prod")
    assert ws.pool == pool
    patched = tfe.send("patch", f"workspaces/ws-{ws.id}",
                       {"data": {"type": "workspaces", "attributes": {"terraform-version": "0.0.1"}}})
    assert patched.status_code == 200
    assert patched.json()["data"]["attributes"]["terraform-version"] == "latest"
    ws.refresh_from_db()
    assert ws.terraform_version == ""


def test_it_refuses_a_malformed_document_and_writes_nothing(tfe, pool):
    for raw in (b"{", b"[]", b'{"data": []}', b'{"data": {"type": "runs"}}',
                b'{"data": {"type": "workspaces", "attributes": {"name": 5}}}',
                b'{"data": {"type": "workspaces", "attributes": {"name": "../x"}}}'):
        response = tfe.send("post", "organizations/iac/workspaces", raw=raw)
        assert 400 <= response.status_code < 500, raw
        assert set(errors(response)[0]) >= {"status", "title", "detail"}
    assert not Workspace.objects.exists()


def test_it_keeps_a_workspace_it_cannot_read_hidden(workspace, charlie):
    outsider = Tfe(make_token(charlie))
    assert outsider.get(f"organizations/iac/workspaces/{workspace.name}").status_code == 404
    assert outsider.get(f"workspaces/ws-{workspace.id}").status_code == 404


def _upload(tfe: Tfe, ws: Workspace, files: dict[str, str], *, speculative: bool = False) -> dict:
    cv = tfe.send("post", f"workspaces/ws-{ws.id}/configuration-versions",
                  {"data": {"type": "configuration-versions",
                            "attributes": {"auto-queue-runs": False, "speculative": speculative}}})
    assert cv.status_code == 201, cv.content
    url = cv.json()["data"]["attributes"]["upload-url"]
    assert url.startswith("http://127.0.0.1:8000/api/v2/") or url.startswith("http")
    path = "/" + url.split("/", 3)[3]
    put = Client().put(path, data=archive(files), content_type="application/octet-stream")
    return {"cv": cv.json()["data"], "put": put}


def test_it_takes_an_archive_at_the_signed_upload_url_without_a_token(tfe, workspace):
    up = _upload(tfe, workspace, {"main.tf": DEMO_MAIN_TF})
    assert up["put"].status_code == 200
    cv = tfe.get(f"configuration-versions/{up['cv']['id']}").json()["data"]
    assert cv["attributes"]["status"] == "uploaded"
    assert "upload-url" not in cv["attributes"]


def test_it_refuses_an_archive_that_escapes_and_says_so_on_the_version(tfe, workspace):
    up = _upload(tfe, workspace, {"../evil.tf": "x"})
    assert up["put"].status_code == 422
    assert "escapes" in errors(up["put"])[0]["detail"]
    cv = tfe.get(f"configuration-versions/{up['cv']['id']}").json()["data"]
    assert cv["attributes"]["status"] == "errored"


def test_it_refuses_a_forged_or_foreign_upload_url(tfe, workspace):
    cv = tfe.send("post", f"workspaces/ws-{workspace.id}/configuration-versions",
                  {"data": {"type": "configuration-versions"}}).json()["data"]
    other = ConfigurationUpload.objects.create(workspace=workspace)
    foreign = signing.sign("upload", other.id)
    for token in ("nope", foreign, signing.sign("plan-log", int(cv["id"][3:]))):
        response = Client().put(f"/api/v2/configuration-versions/{cv['id']}/upload/{token}",
                                data=archive({"main.tf": DEMO_MAIN_TF}), content_type="application/octet-stream")
        assert response.status_code == 404


def test_it_expires_signed_urls(workspace, monkeypatch):
    token = signing.sign("plan-log", 1)
    monkeypatch.setattr(django_signing.TimestampSigner, "timestamp", lambda self: "0")
    assert signing.unsign(token, "plan-log") == 1
    old = django_signing.TimestampSigner(salt=signing.SALT).sign("plan-log.1")
    with pytest.raises(Exception, match="expired"):
        signing.unsign(old, "plan-log")


def _run(tfe: Tfe, ws: Workspace, cv_id: str | None, **attributes):
    relationships = {"workspace": {"data": {"type": "workspaces", "id": f"ws-{ws.id}"}}}
    if cv_id:
        relationships["configuration-version"] = {"data": {"type": "configuration-versions", "id": cv_id}}
    return tfe.send("post", "runs", {"data": {"type": "runs", "attributes": attributes,
                                              "relationships": relationships}})


def test_it_creates_a_run_with_the_clis_options(tfe, workspace):
    up = _upload(tfe, workspace, {"main.tf": DEMO_MAIN_TF})
    response = _run(tfe, workspace, up["cv"]["id"], **{
        "auto-apply": True, "target-addrs": ["terraform_data.demo"], "refresh": True,
        "variables": [{"key": "greeting", "value": '"hi \\"there\\""'}, {"key": "n", "value": "3"}]})
    assert response.status_code == 201, response.content
    data = response.json()["data"]
    task = Task.objects.get(id=int(data["id"][4:]))
    assert task.operation == "plan_and_apply" and task.auto_apply
    assert task.plan_targets == ["terraform_data.demo"]
    assert task.run_variables == {"greeting": 'hi "there"', "n": "3"}
    assert task.configuration_version == ConfigurationUpload.objects.get(id=int(up["cv"]["id"][3:])).configuration_version
    assert data["relationships"]["plan"]["data"]["id"] == f"plan-{task.id}"
    assert data["relationships"]["configuration-version"]["data"]["id"] == up["cv"]["id"]
    plan = tfe.get(f"plans/plan-{task.id}").json()["data"]
    assert plan["attributes"]["log-read-url"].startswith("http")


def test_it_makes_a_speculative_configuration_a_plan_only_run(tfe, workspace):
    up = _upload(tfe, workspace, {"main.tf": DEMO_MAIN_TF}, speculative=True)
    data = _run(tfe, workspace, up["cv"]["id"]).json()["data"]
    assert data["attributes"]["plan-only"] is True
    assert Task.objects.get(id=int(data["id"][4:])).operation == "plan"


def test_it_keeps_a_plan_level_member_from_planning_a_configuration_of_their_own(workspace, bob):
    tfe = Tfe(make_token(bob))
    ws = tfe.get(f"workspaces/ws-{workspace.id}").json()["data"]["attributes"]["permissions"]
    assert ws["can-queue-run"] and not ws["can-queue-apply"] and not ws["can-update"]
    for speculative in (False, True):
        refused = tfe.send("post", f"workspaces/ws-{workspace.id}/configuration-versions",
                           {"data": {"type": "configuration-versions", "attributes": {"speculative": speculative}}})
        assert refused.status_code == 403
        assert "you need 'write'" in errors(refused)[0]["detail"]
    assert not ConfigurationUpload.objects.exists()


def test_it_frames_a_phase_log_with_stx_and_etx(tfe, workspace):
    from tasks_app.tfe.views import _log_answer

    class Request:
        GET = {"offset": "0", "limit": "100"}

    assert _log_answer(Request(), b"hello\n", done=False, end_key="tfe-log-end:test").content == b"\x02hello\n"
    assert _log_answer(Request(), b"hello\n", done=True, end_key="tfe-log-end:test").content == b"\x02hello\n\x03"
    Request.GET = {"offset": "3", "limit": "2"}
    assert _log_answer(Request(), b"hello\n", done=True, end_key="tfe-log-end:test").content == b"ll"


def test_it_answers_run_actions_on_the_wrong_status_with_our_words(tfe, workspace):
    task = Task.objects.create(workspace=workspace, configuration_version=workspace.configuration_versions.first(),
                               operation="plan_and_apply", status="planning")
    response = tfe.send("post", f"runs/run-{task.id}/actions/apply", raw=b"{}")
    assert response.status_code == 409
    assert "only a run in 'apply_pending' can be confirmed" in errors(response)[0]["detail"]
    assert tfe.send("post", f"runs/run-{task.id}/actions/explode").status_code == 404


def test_it_lists_an_empty_queue_with_the_pagination_go_tfe_needs(tfe):
    body = tfe.get("organizations/iac/runs/queue").json()
    assert body["data"] == [] and body["meta"]["pagination"]["total-pages"] == 1


def test_it_answers_unknown_routes_with_a_jsonapi_404(tfe):
    response = tfe.get("no/such/thing")
    assert response.status_code == 404 and errors(response)


def test_it_refuses_an_address_that_reads_as_an_option_and_ignores_a_forged_message(tfe, workspace):
    up = _upload(tfe, workspace, {"main.tf": DEMO_MAIN_TF})
    refused = _run(tfe, workspace, up["cv"]["id"], **{"target-addrs": ["-lock=false"]})
    assert refused.status_code == 422 and "target-addrs" in errors(refused)[0]["source"]["pointer"]
    assert not Task.objects.exists()
    data = _run(tfe, workspace, up["cv"]["id"], message="discarded by alice").json()["data"]
    assert Task.objects.get(id=int(data["id"][4:])).message == "queued by terraform through the TFE API"


def test_it_refuses_a_forged_or_foreign_log_url(tfe, workspace):
    task = Task.objects.create(workspace=workspace, configuration_version=workspace.configuration_versions.first(),
                               operation="plan", status="planning")
    good = tfe.get(f"plans/plan-{task.id}").json()["data"]["attributes"]["log-read-url"]
    assert Client().get("/" + good.split("/", 3)[3]).content == b"\x02"
    for path in (f"plans/plan-{task.id}/logs/forged", f"plans/plan-{task.id + 1}/logs/{good.rsplit('/', 1)[1]}",
                 f"applies/apply-{task.id}/logs/{good.rsplit('/', 1)[1]}"):
        assert Client().get(f"/api/v2/{path}").status_code == 404, path


def test_it_sends_terraform_login_to_the_tokens_page(client):
    response = client.get("/app/settings/tokens?source=terraform-login")
    assert response.status_code == 302 and response["Location"] == "/tokens/"


def test_it_writes_a_cli_config_naming_the_host_by_its_port():
    from tasks_app.tfe.cli_config import cli_config, cli_hostname

    assert cli_hostname("http://127.0.0.1:8000") == "127.0.0.1:8000"
    text = cli_config("http://127.0.0.1:8000", 'a"b')
    assert 'host "127.0.0.1:8000"' in text and '"tfe.v2" = "http://127.0.0.1:8000/api/v2/"' in text
    assert 'token = "a\\"b"' in text


def test_it_refuses_a_link_in_the_clis_archive_with_words_terraform_prints(tfe, workspace):
    """go-slug packs a link inside the configuration as a link; ours refuses every link (none
    may point outside, and an in-tree one is refused too, saying so), leaving no configuration."""
    cv = tfe.send("post", f"workspaces/ws-{workspace.id}/configuration-versions",
                  {"data": {"type": "configuration-versions"}}).json()["data"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        main = tarfile.TarInfo("main.tf")
        main.size = len(DEMO_MAIN_TF)
        tar.addfile(main, io.BytesIO(DEMO_MAIN_TF.encode()))
        link = tarfile.TarInfo("alias.tf")
        link.type, link.linkname = tarfile.SYMTYPE, "main.tf"
        tar.addfile(link)
    before = workspace.configuration_versions.count()
    response = Client().put("/" + cv["attributes"]["upload-url"].split("/", 3)[3], data=buf.getvalue(),
                            content_type="application/octet-stream")
    assert response.status_code == 422
    assert errors(response)[0]["detail"] == "archive: links are not supported in configurations: alias.tf"
    assert workspace.configuration_versions.count() == before


@pytest.mark.parametrize("attributes,status", [
    ({"variables": "greeting=hi"}, 422),
    ({"variables": [{"key": "bad key", "value": '"x"'}]}, 422),
    ({"variables": [{"key": "ok", "value": 5}]}, 422),
    ({"refresh": False}, 422),
    ({"is-destroy": True, "refresh-only": True}, 422),
    ({"auto-apply": "yes"}, 422),
    ({"target-addrs": "terraform_data.demo"}, 422),
    ({"replace-addrs": ["a\nb"]}, 422),
])
def test_it_refuses_a_hostile_run_and_writes_nothing(tfe, workspace, attributes, status):
    up = _upload(tfe, workspace, {"main.tf": DEMO_MAIN_TF})
    before = Task.objects.count()
    response = _run(tfe, workspace, up["cv"]["id"], **attributes)
    assert response.status_code == status, response.content
    assert set(errors(response)[0]) >= {"status", "title", "detail"}
    assert Task.objects.count() == before


def test_it_refuses_a_configuration_that_is_not_the_workspaces_or_not_uploaded(tfe, workspace, pool):
    other = Workspace.objects.create(name="other", pool=pool)
    foreign = ConfigurationUpload.objects.create(workspace=other)
    pending = ConfigurationUpload.objects.create(workspace=workspace)
    assert _run(tfe, workspace, f"cv-{foreign.id}").status_code == 404
    assert _run(tfe, workspace, f"cv-{pending.id}").status_code == 409
    assert _run(tfe, workspace, "cv-x").status_code == 404
    response = tfe.send("post", "runs", {"data": {"type": "runs", "relationships": {
        "workspace": {"data": {"type": "workspaces", "id": "../1"}}}}})
    assert response.status_code == 404
    assert not Task.objects.exists()


def test_it_never_applies_a_speculative_configuration_for_a_later_run(tfe, workspace, alice):
    """A speculative configuration (`terraform plan`'s): a run queued later without naming
    one (the run page's, the REST API's) still applies the workspace's own."""
    from tasks_app.services.runs import run_create

    own = workspace.configuration_versions.get()
    up = _upload(tfe, workspace, {"main.tf": 'resource "terraform_data" "other" {}\n'}, speculative=True)
    assert up["put"].status_code == 200
    assert workspace.configuration_versions.count() == 2
    task = run_create(workspace=workspace, operation="plan_and_apply", actor=alice)
    assert task.configuration_version == own


def test_it_refuses_an_organization_name_terraform_could_not_use():
    from tests.test_settings_env import load_settings

    result = load_settings(IAC_ORGANIZATION="acme corp")
    assert result.returncode != 0
    assert 'Environment variable "IAC_ORGANIZATION" invalid' in result.stderr


def test_a_phase_just_over_reads_as_running_until_a_reader_got_its_logs_end(tfe, workspace):
    """go-tfe's log reader asks the phase's status after reads that bring nothing: had it
    read just before the last lines and the status were committed, "errored"/"finished"
    would make it stop without them. For a moment after the end, the phase reads as running
    until its log's end (ETX) has been served."""
    cv = workspace.configuration_versions.first()
    task = Task.objects.create(workspace=workspace, configuration_version=cv, operation="plan", status="errored")
    assert tfe.get(f"plans/plan-{task.id}").json()["data"]["attributes"]["status"] == "running"
    url = tfe.get(f"plans/plan-{task.id}").json()["data"]["attributes"]["log-read-url"]
    assert Client().get("/" + url.split("/", 3)[3], {"offset": 0, "limit": 65536}).content.endswith(b"\x03")
    assert tfe.get(f"plans/plan-{task.id}").json()["data"]["attributes"]["status"] == "errored"

    # Over for longer than the grace: over, reader or not.
    older = Task.objects.create(workspace=workspace, configuration_version=cv, operation="plan", status="errored")
    Task.objects.filter(id=older.id).update(updated_at=timezone.now() - timedelta(seconds=5))
    assert tfe.get(f"plans/plan-{older.id}").json()["data"]["attributes"]["status"] == "errored"
