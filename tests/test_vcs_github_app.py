"""A GitHub connection that authenticates as a GitHub App: its credentials at the API's door
(site admins, a key that must parse as an RSA private key, a token or an App, never both,
the key never shown again nor stored in clear) and the installation token's cache (traded
once for its lifetime, again shortly before it expires), against the local fake GitHub."""

from __future__ import annotations

import json
import logging

import github as pygithub
import pytest
from django.db import connection as db
from rest_framework.test import APIClient

from tasks_app.models import AuditEvent
from tasks_app.vcs import forges, github_app
from tasks_app.vcs.models import VcsConnection
from tests.e2e.github_app_fake import FakeGitHubApp, new_private_key
from tests.factories import make_token

pytestmark = pytest.mark.django_db

APP_ID, INSTALLATION = "123456", 4567890


@pytest.fixture(scope="module")
def pem() -> str:
    return new_private_key()


def _body(pem: str, **fields) -> dict:
    return {"name": "gh-app", "kind": "github", "url": "https://github.com", "app_id": APP_ID,
            "app_private_key": pem, "app_installation_id": INSTALLATION, **fields}


def _key_body(pem: str) -> str:
    """The key's secret part, whatever whitespace or escaping surrounds it."""
    return "".join(pem.strip().splitlines()[1:-1])[:200]


def _shows(text: str, pem: str) -> bool:
    flat = text.replace("\\n", "").replace("\n", "")
    return _key_body(pem)[:60] in flat


def test_it_makes_an_app_connection_and_never_shows_the_key(api, pem):
    made = api.post("/api/v1/vcs-connections/", _body(pem), format="json")
    assert made.status_code == 201, made.content
    answer = made.json()
    assert answer["auth"] == "github_app" and answer["app_id"] == APP_ID
    assert answer["app_installation_id"] == INSTALLATION and answer["has_app_private_key"] is True
    assert answer["has_token"] is False and "app_private_key" not in answer
    assert not _shows(made.content.decode(), pem)
    listed = api.get("/api/v1/vcs-connections/")
    one = api.get(f"/api/v1/vcs-connections/{answer['id']}/")
    assert one.status_code == 200 and one.json()["auth"] == "github_app"
    for text in (listed.content.decode(), one.content.decode(),
                 api.get("/api/v1/audit-events/").content.decode()):
        assert not _shows(text, pem)
    with db.cursor() as cur:
        cur.execute("SELECT encrypted_github_app_private_key FROM tasks_app_vcsconnection")
        (stored,) = cur.fetchone()
    assert _key_body(pem)[:60].encode() not in bytes(stored)
    assert VcsConnection.objects.get().github_app_private_key.strip() == pem.strip()
    assert not _shows(json.dumps(list(AuditEvent.objects.values("data"))), pem)


@pytest.mark.parametrize("key, words", [
    ("not a key at all", "is not a PEM private key"),
    ("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n", "is not a PEM private key"),
    ("ec", "is not an RSA key"),
    ("small", "is a 1024-bit RSA key"),
    ("encrypted", "encrypted with a passphrase"),
])
def test_it_refuses_a_key_that_is_not_an_rsa_private_key_and_says_why(api, key, words):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    if key == "ec":
        key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    elif key == "small":
        key = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()).decode()
    elif key == "encrypted":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase")).decode()
    refused = api.post("/api/v1/vcs-connections/", _body(key), format="json")
    assert refused.status_code == 400, refused.content
    assert "app_private_key" in refused.content.decode() and words in refused.content.decode()
    assert not VcsConnection.objects.exists()


@pytest.mark.parametrize("fields, words", [
    ({"token": "ghp_x"}, "not both"),
    ({"app_installation_id": None}, "needs its app_id, app_private_key and app_installation_id"),
    ({"app_id": ""}, "needs its app_id, app_private_key and app_installation_id"),
    ({"kind": "gitlab", "url": "https://gitlab.example.com"}, "only GitHub connections"),
    ({"app_id": "12 34"}, "the GitHub App's id"),
])
def test_it_takes_a_token_or_a_complete_app_not_both(api, pem, fields, words):
    refused = api.post("/api/v1/vcs-connections/", _body(pem, **fields), format="json")
    assert refused.status_code == 400, refused.content
    assert words in refused.content.decode()


def test_patch_moves_a_connection_from_a_token_to_an_app_and_back(api, pem):
    made = api.post("/api/v1/vcs-connections/", {"name": "gh", "kind": "github", "url": "https://github.com",
                                                 "token": "ghp_old"}, format="json").json()
    url = f"/api/v1/vcs-connections/{made['id']}/"
    bad = api.patch(url, {"app_id": APP_ID, "app_private_key": "nope", "app_installation_id": 1}, format="json")
    assert bad.status_code == 400 and "is not a PEM private key" in bad.content.decode()
    assert VcsConnection.objects.get().token == "ghp_old"
    both = api.patch(url, {"token": "ghp_new", "app_id": APP_ID, "app_private_key": pem,
                           "app_installation_id": INSTALLATION}, format="json")
    assert both.status_code == 400 and "not both" in both.content.decode()

    moved = api.patch(url, {"app_id": APP_ID, "app_private_key": pem, "app_installation_id": INSTALLATION},
                      format="json")
    assert moved.status_code == 200, moved.content
    assert moved.json()["auth"] == "github_app" and moved.json()["has_token"] is False
    assert not _shows(moved.content.decode(), pem)
    c = VcsConnection.objects.get()
    assert c.uses_github_app and c.token == ""
    # Another installation, the stored key kept.
    again = api.patch(url, {"app_installation_id": 42}, format="json")
    assert again.status_code == 200 and again.json()["app_installation_id"] == 42
    assert VcsConnection.objects.get().github_app_private_key.strip() == pem.strip()

    back = api.patch(url, {"token": "ghp_back"}, format="json")
    assert back.status_code == 200 and back.json()["auth"] == "token" and back.json()["app_id"] is None
    c = VcsConnection.objects.get()
    assert c.token == "ghp_back" and not c.uses_github_app and c.encrypted_github_app_private_key is None
    changes = [e["data"]["changed"] for e in AuditEvent.objects.filter(action="vcs_connection.update").values("data")]
    assert ["app_id", "app_installation_id", "app_private_key"] in changes and ["token"] in changes
    assert "ghp_back" not in json.dumps(list(AuditEvent.objects.values("data")))


def test_only_site_admins_see_or_change_a_connection(api, charlie, pem):
    made = api.post("/api/v1/vcs-connections/", _body(pem), format="json").json()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {make_token(charlie)}")
    url = f"/api/v1/vcs-connections/{made['id']}/"
    assert client.get(url).status_code == 403
    assert client.patch(url, {"token": "ghp_mine"}, format="json").status_code == 403
    assert VcsConnection.objects.get().uses_github_app
    assert api.patch("/api/v1/vcs-connections/999999/", {"token": "x"}, format="json").status_code == 404


def _connection(pem: str) -> VcsConnection:
    c = VcsConnection(id=987654, name="gh-app", kind="github", url="https://github.com", github_app_id=APP_ID,
                      github_app_installation_id=INSTALLATION)
    from iacplatform import crypto
    c.encrypted_github_app_private_key = crypto.encrypt(pem.encode())
    return c


def test_the_installation_token_is_traded_once_and_again_shortly_before_it_expires(pem, caplog):
    # Everything at DEBUG, PyGithub's debug logging too: still neither token nor key logged.
    caplog.set_level(logging.DEBUG)
    pygithub.set_log_level(logging.DEBUG)
    fake = FakeGitHubApp(app_id=APP_ID, installation_id=INSTALLATION, private_key=pem)
    c = _connection(pem)
    github_app.forget(c.id)
    try:
        first = github_app.installation_token(c, fake.url)
        assert first.startswith("ghs_") and github_app.installation_token(c, fake.url) == first
        assert len(fake.app.grants) == 1 and fake.app.refused == []
        claims = fake.app.grants[0].claims
        assert str(claims["iss"]) == APP_ID and claims["exp"] - claims["iat"] <= 660
        assert "<hidden>" in repr(github_app._cache) and first not in repr(github_app._cache)
        # A token with less than REFRESH_BEFORE_SECONDS left is traded for a new one.
        fake.app.ttl = github_app.REFRESH_BEFORE_SECONDS - 30
        github_app.forget(c.id)
        short = github_app.installation_token(c, fake.url)
        assert github_app.installation_token(c, fake.url) != short and len(fake.app.grants) == 3
        assert not any(t in caplog.text for t in fake.tokens()) and not _shows(caplog.text, pem)
    finally:
        pygithub.set_log_level(logging.INFO)
        github_app.forget(c.id)
        fake.stop()


def test_a_key_github_does_not_know_is_reported_without_the_key(pem, settings):
    settings.IAC_VCS_ALLOW_LOCAL_HOSTS = True
    fake = FakeGitHubApp(app_id=APP_ID, installation_id=INSTALLATION, private_key=new_private_key())
    c = _connection(pem)
    github_app.forget(c.id)
    try:
        with pytest.raises(github_app.GitHubAppError) as refused:
            github_app.installation_token(c, fake.url)
        assert "GitHub refused the App's installation token (401)" in str(refused.value)
        assert fake.app.refused and fake.app.grants == []
        # Reporting to the forge turns it into a ForgeError: retried with back-off, run untouched.
        c.api_url = fake.url
        with pytest.raises(forges.ForgeError):
            forges.status_set(c, repository="org/infra", sha="a" * 40, state="pending", description="x",
                              context="iac/x", target_url="https://iac.example.com/runs/1/")
    finally:
        github_app.forget(c.id)
        fake.stop()


def test_the_admin_makes_an_app_connection_and_rotates_its_key_without_showing_it(client, alice, pem):
    client.force_login(alice)
    added = client.post("/admin/tasks_app/vcsconnection/add/", {
        "name": "gh-admin", "kind": "github", "url": "https://github.com", "api_url": "", "token": "",
        "ssh_key": "", "app_id": APP_ID, "app_private_key": pem, "app_installation_id": str(INSTALLATION),
        "webhook_secret": "", "poll_interval_seconds": "0", "trusted_authors": "[]"})
    assert added.status_code == 302, added.content.decode()[:2000]
    c = VcsConnection.objects.get(name="gh-admin")
    assert c.uses_github_app and c.github_app_private_key.strip() == pem.strip()
    page = client.get(f"/admin/tasks_app/vcsconnection/{c.id}/change/")
    assert page.status_code == 200 and not _shows(page.content.decode(), pem) and APP_ID in page.content.decode()

    bad = client.post(f"/admin/tasks_app/vcsconnection/{c.id}/change/", {"app_private_key": "nope"}, follow=True)
    assert "is not a PEM private key" in bad.content.decode()
    rotated = new_private_key()
    client.post(f"/admin/tasks_app/vcsconnection/{c.id}/change/", {"app_private_key": rotated})
    c.refresh_from_db()
    assert c.github_app_private_key.strip() == rotated.strip() and c.github_app_id == APP_ID
    assert not _shows(client.get(f"/admin/tasks_app/vcsconnection/{c.id}/change/").content.decode(), rotated)
