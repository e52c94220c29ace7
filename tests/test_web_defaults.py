"""Web defaults: the URL split, allowed hosts, secure cookies and HSTS behind https, a clean
`check --deploy`, rate-limited logins, and read-only admin rows that cannot be deleted."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib import admin
from django.db.models import F
from django.test import Client

ROOT = Path(__file__).resolve().parent.parent

PRODUCTION = {
    "IAC_PUBLIC_URL": "https://iac.example.com",
    "IAC_DEBUG": "0",
    "SECRET_KEY": secrets.token_urlsafe(50),
}


def run_django(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("IAC_ALLOWED_HOSTS", "IAC_CSRF", "IAC_AGENT_URL",
                                                                      "IAC_SECURE_PROXY", "IAC_HSTS"))}
    full.update(DJANGO_SETTINGS_MODULE="iacplatform.settings", **env)
    return subprocess.run([sys.executable, "-c", "import django; django.setup(); " + code],
                          cwd=ROOT, env=full, capture_output=True, text=True, timeout=120)


def web_settings(**env: str) -> dict:
    names = ["ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "IAC_PUBLIC_URL", "IAC_AGENT_URL", "SESSION_COOKIE_SECURE",
             "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS", "SECURE_PROXY_SSL_HEADER", "SECURE_SSL_REDIRECT",
             "SECURE_REDIRECT_EXEMPT"]
    result = run_django(
        "import json; from django.conf import settings; "
        f"print(json.dumps({{n: getattr(settings, n, None) for n in {names!r}}}))",
        **env,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_it_passes_check_deploy_with_production_settings():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env={**os.environ, **PRODUCTION}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr


def test_it_secures_cookies_and_turns_on_hsts_with_an_https_public_url():
    s = web_settings(**PRODUCTION, IAC_AGENT_URL="http://iac-web.iac.svc.cluster.local:8000")
    assert s["IAC_PUBLIC_URL"] == "https://iac.example.com"
    assert s["IAC_AGENT_URL"] == "http://iac-web.iac.svc.cluster.local:8000"
    assert s["SESSION_COOKIE_SECURE"] and s["CSRF_COOKIE_SECURE"]
    assert s["SECURE_HSTS_SECONDS"] >= 365 * 24 * 3600
    assert s["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert s["SECURE_SSL_REDIRECT"]
    # Agents on the plain-http Service are not redirected to https.
    assert any(p.startswith("^agent/") for p in s["SECURE_REDIRECT_EXEMPT"])
    assert s["ALLOWED_HOSTS"][:2] == ["iac.example.com", "iac-web.iac.svc.cluster.local"]
    assert s["CSRF_TRUSTED_ORIGINS"] == ["https://iac.example.com"]


def test_it_keeps_cookies_plain_and_hsts_off_over_http():
    s = web_settings(IAC_PUBLIC_URL="http://127.0.0.1:8123")
    assert s["IAC_AGENT_URL"] == "http://127.0.0.1:8123"  # defaults to the public URL
    assert not s["SESSION_COOKIE_SECURE"] and not s["CSRF_COOKIE_SECURE"]
    assert s["SECURE_HSTS_SECONDS"] == 0 and not s["SECURE_SSL_REDIRECT"]
    assert s["SECURE_PROXY_SSL_HEADER"] is None
    assert "*" not in s["ALLOWED_HOSTS"]
    assert set(s["ALLOWED_HOSTS"]) == {"127.0.0.1", "localhost", "[::1]"}


def test_it_lets_the_operator_override_hosts_and_the_proxy_header():
    s = web_settings(**PRODUCTION, IAC_ALLOWED_HOSTS="a.example,b.example", IAC_SECURE_PROXY_SSL_HEADER="off")
    assert s["ALLOWED_HOSTS"] == ["a.example", "b.example"]
    assert s["SECURE_PROXY_SSL_HEADER"] is None and not s["SECURE_SSL_REDIRECT"]


def test_it_refuses_a_bad_proxy_header_naming_the_variable():
    result = run_django("", **PRODUCTION, IAC_SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto")
    assert result.returncode != 0
    assert 'Environment variable "IAC_SECURE_PROXY_SSL_HEADER" invalid' in result.stderr


@pytest.mark.django_db
def test_it_redirects_browsers_to_https_but_not_agents_on_the_plain_http_service(settings):
    s = web_settings(**PRODUCTION, IAC_AGENT_URL="http://iac-web.iac.svc:8000")
    settings.SECURE_SSL_REDIRECT = s["SECURE_SSL_REDIRECT"]
    settings.SECURE_REDIRECT_EXEMPT = s["SECURE_REDIRECT_EXEMPT"]
    settings.SECURE_PROXY_SSL_HEADER = tuple(s["SECURE_PROXY_SSL_HEADER"])
    client = Client()  # a new client loads the middleware with these settings

    login = client.get("/accounts/login/")
    assert login.status_code == 301 and login["Location"].startswith("https://")
    assert client.get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https").status_code == 200
    for path in ["/agent/v1/heartbeat", "/api/v1/workspaces/1/state", "/api/v1/workspaces/1/state/lock"]:
        assert client.get(path).status_code != 301, path  # refused for want of credentials, not redirected


@pytest.mark.django_db
def test_it_refuses_a_request_naming_another_host(client):
    assert client.get("/accounts/login/", HTTP_HOST="evil.example").status_code == 400
    assert client.get("/accounts/login/", HTTP_HOST="127.0.0.1:8000").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_it_gives_terraform_the_agent_url_for_the_state_backend(settings, client):
    from tasks_app.services.runs import run_create
    from tests.agents_app.fakes import FakeAgent
    from tests.factories import DEMO_MAIN_TF, make_pool, make_workspace

    settings.IAC_PUBLIC_URL = "https://iac.example.com"
    settings.IAC_AGENT_URL = "http://iac-web.iac.svc:8000"
    pool, token = make_pool()
    ws = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    agent = FakeAgent(client, token, "a1")
    run_create(workspace=ws, operation="plan", actor="test")
    job = agent.claim()
    assert job["state_backend"]["address"] == f"http://iac-web.iac.svc:8000/api/v1/workspaces/{ws.id}/state"


# Login rate limit ---------------------------------------------------------------------------


def login(client: Client, password: str, address: str = "127.0.0.1"):
    return client.post("/accounts/login/", {"username": "alice", "password": password}, REMOTE_ADDR=address)


@pytest.mark.django_db
def test_it_locks_a_login_after_repeated_failures_until_the_cool_off(settings, alice, api):
    from axes.models import AccessAttempt

    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert login(client, "wrong").status_code == 200  # the form again, with an error
    locked = login(client, "wrong")
    assert locked.status_code == 429

    right = login(client, "alice-password-1")
    assert right.status_code == 429
    assert "Too many login attempts" in right.content.decode()
    assert "Even the right password is refused" in right.content.decode()
    assert "_auth_user_id" not in client.session

    # Another address is not locked out by someone else's typos (username + address).
    other = Client()
    assert login(other, "alice-password-1", address="10.0.0.7").status_code == 302

    # The API's tokens do not go through the login: automation keeps working meanwhile.
    assert api.get("/api/v1/workspaces/").status_code == 200

    # Once the cool-off has passed, the right password works again.
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))
    assert login(client, "alice-password-1").status_code == 302


# Admin --------------------------------------------------------------------------------------


READ_ONLY_MODELS = ["tasks_app.StateVersion", "tasks_app.TaskEvent", "tasks_app.AuditEvent", "tasks_app.LogChunk",
                    "tasks_app.Plan", "tasks_app.Job", "tasks_app.Task", "tasks_app.ConfigurationVersion",
                    "tasks_app.DispatchEvent", "tasks_app.Slot", "agents_app.Agent"]


@pytest.mark.django_db
@pytest.mark.parametrize("label", READ_ONLY_MODELS)
def test_it_lets_no_one_delete_read_only_rows_in_the_admin(rf, alice, label):
    from django.apps import apps

    model_admin = admin.site._registry[apps.get_model(label)]
    request = rf.get("/admin/")
    request.user = alice  # a superuser
    assert not model_admin.has_change_permission(request)
    assert not model_admin.has_delete_permission(request)


@pytest.mark.django_db
def test_it_refuses_the_delete_page_of_a_state_version(client, alice, workspace):
    from iacplatform import crypto
    from tasks_app.models import StateVersion

    version = StateVersion.objects.create(workspace=workspace, serial=1, lineage="l", sha256="b" * 64, size=2,
                                          encrypted_data=crypto.encrypt(b"{}"))
    client.force_login(alice)
    assert client.get(f"/admin/tasks_app/stateversion/{version.id}/delete/").status_code == 403
    assert client.post(f"/admin/tasks_app/stateversion/{version.id}/delete/", {"post": "yes"}).status_code == 403
    assert StateVersion.objects.filter(id=version.id).exists()
