"""A workspace's environment variables may not take names that change how programs load or
where terraform keeps its state, plan and lock: refused with a 400 that names the rule, by the
REST API and the admin alike (which audits what it accepts, as the API does)."""

from __future__ import annotations

import pytest
from django.test import Client

from tasks_app.models import AuditEvent, Variable
from tests.factories import make_pool, make_workspace

pytestmark = pytest.mark.django_db


# (name, words of the rule the answer must say)
REFUSED = [
    ("LD_PRELOAD", "names starting with LD_ change how programs load"),
    ("LD_AUDIT", "names starting with LD_ change how programs load"),
    ("LD_LIBRARY_PATH", "names starting with LD_ change how programs load"),
    ("LD_ANYTHING_ELSE", "names starting with LD_ change how programs load"),
    ("ld_preload", "names starting with LD_ change how programs load"),
    # glibc's list of variables it ignores for setuid programs
    ("GCONV_PATH", "glibc ignores it for setuid programs"),
    ("HOSTALIASES", "glibc ignores it for setuid programs"),
    ("LOCALDOMAIN", "glibc ignores it for setuid programs"),
    ("MALLOC_TRACE", "glibc ignores it for setuid programs"),
    ("NLSPATH", "glibc ignores it for setuid programs"),
    ("RES_OPTIONS", "glibc ignores it for setuid programs"),
    ("RESOLV_HOST_CONF", "glibc ignores it for setuid programs"),
    ("TMPDIR", "glibc ignores it for setuid programs"),
    ("TZDIR", "glibc ignores it for setuid programs"),
    ("HOME", "the platform sets HOME"),
    ("PATH", "the platform sets PATH"),
    ("TF_DATA_DIR", "moves terraform's working data"),
    ("TF_PLUGIN_CACHE_DIR", "provider cache"),
    ("TF_CLI_CONFIG_FILE", "terraform's CLI configuration"),
    ("TF_CLI_ARGS", "names starting with TF_CLI_ARGS add options to every terraform command"),
    ("TF_CLI_ARGS_plan", "names starting with TF_CLI_ARGS add options to every terraform command"),
    ("TF_WORKSPACE", "chooses the state"),
    ("TF_IN_AUTOMATION", "how terraform runs"),
    ("TF_INPUT", "how terraform runs"),
    ("TF_HTTP_ADDRESS", "names starting with TF_HTTP_ set the platform's state backend"),
    ("TF_HTTP_PASSWORD", "names starting with TF_HTTP_ set the platform's state backend"),
    ("IAC_POOL_TOKEN", "names starting with IAC_ are the platform's own settings"),
]


@pytest.fixture
def ws(db):
    pool, _ = make_pool()
    return make_workspace(pool=pool)


def variables_url(ws) -> str:
    return f"/api/v1/workspaces/{ws.id}/variables/"


@pytest.mark.parametrize(("name", "rule"), REFUSED)
def test_it_refuses_an_env_variable_whose_name_changes_how_programs_run(api, ws, name, rule):
    resp = api.post(variables_url(ws), {"key": name, "value": "./evil.so", "category": "env"}, format="json")
    assert resp.status_code == 400, resp.content
    body = resp.json()
    assert body["errors"]["key"][0].startswith(f"{name}: ") and rule in body["errors"]["key"][0]
    assert rule in body["detail"] and "refused" in body["detail"]
    assert not Variable.objects.filter(workspace=ws).exists()
    assert not AuditEvent.objects.filter(action__startswith="variable.").exists()


def test_it_refuses_renaming_or_recategorising_a_variable_into_a_refused_env_name(api, ws):
    plain = api.post(variables_url(ws), {"key": "GREETING", "value": "hi", "category": "env"}, format="json").json()
    renamed = api.patch(f"/api/v1/variables/{plain['id']}/", {"key": "LD_PRELOAD"}, format="json")
    assert renamed.status_code == 400
    assert renamed.json()["errors"]["key"] == ["LD_PRELOAD: names starting with LD_ change how programs load and are refused"]

    # A terraform variable named HOME is TF_VAR_HOME to terraform: allowed, but not as `env`.
    tf_var = api.post(variables_url(ws), {"key": "HOME", "value": "/", "category": "terraform"}, format="json")
    assert tf_var.status_code == 201
    moved = api.patch(f"/api/v1/variables/{tf_var.json()['id']}/", {"category": "env"}, format="json")
    assert moved.status_code == 400 and "the platform sets HOME" in moved.json()["detail"]

    stored = {(v.key, v.category) for v in Variable.objects.filter(workspace=ws)}
    assert stored == {("GREETING", "env"), ("HOME", "terraform")}
    assert list(AuditEvent.objects.filter(action="variable.update")) == []


def test_it_accepts_registry_tokens_and_ordinary_names(api, ws):
    for name in ("TF_TOKEN_registry_example_com", "AWS_REGION", "TF_LOG", "HTTPS_PROXY", "LDAP_URI"):
        resp = api.post(variables_url(ws), {"key": name, "value": "v", "category": "env"}, format="json")
        assert resp.status_code == 201, (name, resp.content)


# The admin ---------------------------------------------------------------------------------


@pytest.fixture
def admin_client(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def admin_form(ws, key: str, **fields) -> dict:
    return {"workspace": ws.id, "key": key, "category": "env", "value": "./evil.so", **fields}


def test_the_admin_form_refuses_the_same_names_in_the_same_words(admin_client, ws):
    resp = admin_client.post("/admin/tasks_app/variable/add/", admin_form(ws, "LD_PRELOAD"))
    assert resp.status_code == 200  # the form again, with the error
    assert "LD_PRELOAD: names starting with LD_ change how programs load and are refused" in resp.content.decode()
    assert not Variable.objects.exists()

    ok = admin_client.post("/admin/tasks_app/variable/add/", admin_form(ws, "GREETING", value="hello"))
    assert ok.status_code == 302
    var = Variable.objects.get(workspace=ws, key="GREETING")
    renamed = admin_client.post(f"/admin/tasks_app/variable/{var.id}/change/",
                                {"key": "TF_CLI_ARGS_apply", "category": "env", "value": "-lock=false"})
    assert renamed.status_code == 200
    assert "names starting with TF_CLI_ARGS add options to every terraform command" in renamed.content.decode()
    var.refresh_from_db()
    assert (var.key, var.plain_value) == ("GREETING", "hello")


def test_the_admin_audits_what_it_changes_as_the_api_does(admin_client, alice, ws):
    admin_client.post("/admin/tasks_app/variable/add/", admin_form(ws, "GREETING", value="hello"))
    var = Variable.objects.get(workspace=ws, key="GREETING")
    admin_client.post(f"/admin/tasks_app/variable/{var.id}/change/",
                      {"key": "SALUTATION", "category": "env", "value": "hi", "sensitive": "on"})
    var.refresh_from_db()
    assert (var.key, var.sensitive, var.plain_value) == ("SALUTATION", True, "")
    admin_client.post(f"/admin/tasks_app/variable/{var.id}/delete/", {"post": "yes"})
    assert not Variable.objects.exists()

    audit = list(AuditEvent.objects.order_by("id").values_list("action", "actor", "object_id", "data"))
    assert audit == [
        ("variable.create", alice.id, str(ws.id), {"key": "GREETING", "category": "env", "sensitive": False}),
        ("variable.update", alice.id, str(ws.id), {"key": "SALUTATION", "category": "env", "sensitive": True}),
        ("variable.delete", alice.id, str(ws.id), {"key": "SALUTATION", "category": "env"}),
    ]
