"""VCS connections and webhooks at the API's door: site admins only, credentials encrypted and
never shown again, URLs that could reach the platform's own host refused, and webhook
requests that are unsigned, wrongly signed or malformed refused with nothing stored."""

from __future__ import annotations

import json

import pytest
from django.db import connection as db
from rest_framework.test import APIClient

from tasks_app.models import AuditEvent
from tasks_app.vcs.models import VcsConnection, WebhookDelivery
from tests.factories import make_token
from tests.vcs.forge import push_payload, sign

pytestmark = pytest.mark.django_db

TOKEN = "ghp_very_secret_token_value_123"


def _create(api, **fields):
    body = {"name": "gh", "kind": "github", "url": "https://github.com", "token": TOKEN, **fields}
    return api.post("/api/v1/vcs-connections/", body, format="json")


def test_it_keeps_the_token_encrypted_and_never_shows_it_again(api):
    made = _create(api)
    assert made.status_code == 201, made.content
    secret = made.json()["webhook_secret"]
    assert len(secret) >= 32 and made.json()["has_token"] is True and "token" not in made.json()
    listed = api.get("/api/v1/vcs-connections/")
    assert TOKEN not in listed.content.decode() and secret not in listed.content.decode()
    with db.cursor() as cur:
        cur.execute("SELECT encrypted_token, encrypted_webhook_secret FROM tasks_app_vcsconnection")
        token_bytes, secret_bytes = cur.fetchone()
    assert TOKEN.encode() not in bytes(token_bytes) and secret.encode() not in bytes(secret_bytes)
    assert VcsConnection.objects.get().token == TOKEN
    assert TOKEN not in json.dumps(list(AuditEvent.objects.values("data")))


def test_it_lets_only_site_admins_make_connections(charlie):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {make_token(charlie)}")
    assert _create(client).status_code == 403
    assert client.get("/api/v1/vcs-connections/").status_code == 403
    assert not VcsConnection.objects.exists()


@pytest.mark.parametrize("url, words", [
    ("http://github.example.com", "must be https or ssh"),
    ("file:///etc", "must be https or ssh"),
    ("https://127.0.0.1/", "loopback or link-local"),
    ("https://169.254.169.254/", "loopback or link-local"),
    ("https://[::1]/", "loopback or link-local"),
    ("ssh://git@localhost/org/repo.git", "loopback or link-local"),
    ("git@127.0.0.1:org/repo.git", "loopback or link-local"),
    ("https://user:pw@github.com", "no password"),
])
def test_it_refuses_urls_that_reach_the_platforms_own_host(api, settings, url, words):
    settings.IAC_VCS_ALLOW_LOCAL_HOSTS = False
    resp = _create(api, url=url)
    assert resp.status_code == 400, resp.content
    assert words in resp.json()["detail"]
    assert not VcsConnection.objects.exists()


def test_it_refuses_bad_workspace_repository_settings(api, workspace):
    assert _create(api).status_code == 201
    for body, field in [({"connection": "gh", "repository": "../etc"}, "repository"),
                        ({"connection": "gh", "repository": "o/r", "branch": "a..b"}, "branch"),
                        ({"connection": "gh", "repository": "o/r", "working_directory": "../x"}, "working_directory"),
                        ({"connection": "gh", "repository": "o/r", "tag_regex": "("}, "tag_regex")]:
        resp = api.put(f"/api/v1/workspaces/{workspace.id}/vcs/", body, format="json")
        assert resp.status_code == 400 and field in resp.json()["errors"], (body, resp.content)
    assert api.put(f"/api/v1/workspaces/{workspace.id}/vcs/", {"connection": "nope", "repository": "o/r"},
                   format="json").status_code == 404
    workspace.refresh_from_db()
    assert workspace.vcs_connection_id is None


def _post(client, body: bytes, **headers):
    return client.generic("POST", "/webhooks/gh/", body, content_type="application/json", **headers)


def test_it_refuses_unsigned_forged_and_malformed_webhooks_storing_nothing(api, client):
    secret = _create(api).json()["webhook_secret"]
    body = json.dumps(push_payload("org/infra", before="a" * 40, after="b" * 40, message="m", files={})).encode()
    github = {"HTTP_X_GITHUB_EVENT": "push", "HTTP_X_GITHUB_DELIVERY": "d-1"}
    assert _post(client, body, **github).status_code == 403
    assert _post(client, body, HTTP_X_HUB_SIGNATURE_256="sha256=" + "0" * 64, **github).status_code == 403
    assert _post(client, body, HTTP_X_HUB_SIGNATURE_256=sign("wrong", body), **github).status_code == 403
    assert VcsConnection.objects.get().refused_deliveries == 3
    # Signed but not what GitHub sends: a clear 400, nothing stored.
    bad = b'{"ref": 5}'
    resp = _post(client, bad, HTTP_X_HUB_SIGNATURE_256=sign(secret, bad), **github)
    assert resp.status_code == 400 and "ref" in resp.json()["detail"]
    missing_id = _post(client, body, HTTP_X_HUB_SIGNATURE_256=sign(secret, body), HTTP_X_GITHUB_EVENT="push")
    assert missing_id.status_code == 400
    # An event that starts nothing is answered and dropped.
    ping = _post(client, b"{}", HTTP_X_HUB_SIGNATURE_256=sign(secret, b"{}"), HTTP_X_GITHUB_EVENT="ping",
                 HTTP_X_GITHUB_DELIVERY="d-2")
    assert ping.status_code == 202
    assert not WebhookDelivery.objects.exists()
    assert client.post("/webhooks/nope/", b"{}", content_type="application/json").status_code == 404


def test_it_checks_gitlabs_token(api, client):
    made = api.post("/api/v1/vcs-connections/", {"name": "gl", "kind": "gitlab", "url": "https://gitlab.example.com",
                                                 "webhook_secret": "gl-secret-1"}, format="json")
    assert made.status_code == 201
    body = json.dumps({"object_kind": "push", "ref": "refs/heads/main", "before": "a" * 40, "after": "b" * 40,
                       "project": {"path_with_namespace": "org/infra"}, "commits": [], "total_commits_count": 0}).encode()
    headers = {"HTTP_X_GITLAB_EVENT": "Push Hook", "HTTP_IDEMPOTENCY_KEY": "k-1"}
    wrong = client.generic("POST", "/webhooks/gl/", body, content_type="application/json",
                           HTTP_X_GITLAB_TOKEN="nope", **headers)
    assert wrong.status_code == 403 and not WebhookDelivery.objects.exists()
    ok = client.generic("POST", "/webhooks/gl/", body, content_type="application/json",
                        HTTP_X_GITLAB_TOKEN="gl-secret-1", **headers)
    assert ok.status_code == 202
    again = client.generic("POST", "/webhooks/gl/", body, content_type="application/json",
                           HTTP_X_GITLAB_TOKEN="gl-secret-1", **headers)
    assert again.status_code == 200 and WebhookDelivery.objects.count() == 1


def test_it_sets_the_repository_from_the_workspace_page(api, client, alice, charlie, workspace):
    assert _create(api).status_code == 201
    client.force_login(alice)
    page = client.get(f"/workspaces/{workspace.id}/").content.decode()
    assert 'id="vcs-form"' in page and '<option value="gh"' in page
    saved = client.post(f"/workspaces/{workspace.id}/vcs/", {
        "connection": "gh", "repository": "acme/infra", "branch": "prod", "working_directory": "envs/prod",
        "trigger_patterns": "envs/prod/**\nmodules/**"})
    assert saved.status_code == 302
    workspace.refresh_from_db()
    assert (workspace.vcs_connection.name, workspace.vcs_repository, workspace.vcs_branch) == ("gh", "acme/infra", "prod")
    assert workspace.vcs_trigger_patterns == ["envs/prod/**", "modules/**"]
    assert AuditEvent.objects.filter(action="workspace.vcs", actor=alice).exists()
    assert "Follows <strong>acme/infra</strong>" in client.get(f"/workspaces/{workspace.id}/").content.decode()

    bad = client.post(f"/workspaces/{workspace.id}/vcs/", {"connection": "gh", "repository": "../x"}, follow=True)
    assert "Repository not saved" in bad.content.decode()
    workspace.refresh_from_db()
    assert workspace.vcs_repository == "acme/infra"

    client.force_login(charlie)
    assert client.post(f"/workspaces/{workspace.id}/vcs/", {"connection": ""}).status_code == 404
