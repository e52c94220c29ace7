"""/metrics: who may scrape it, the gauges read from the database, and the observations the
services make (Confirm latency by path, queue wait, warmups, the state backend), through the
agent HTTP endpoints with fake agents (no terraform; tests/e2e/test_metrics.py runs one)."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from agents_app.models import Agent
from tasks_app.dispatch.models import Job
from tasks_app.services.runs import run_confirm, run_create, run_discard
from tests.agents_app.fakes import FakeAgent, apply_pending
from tests.factories import DEMO_MAIN_TF, make_agent, make_pool, make_token, make_workspace


def scrape(client: Client):
    """GET /metrics as a scraper does: with the platform's metrics token."""
    return client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {django_settings.IAC_METRICS_TOKEN}")


def samples(client: Client) -> dict[tuple[str, frozenset], float]:
    """One scrape, as {(sample name, labels): value}."""
    resp = scrape(client)
    assert resp.status_code == 200, resp.content
    assert resp["Content-Type"].startswith("text/plain")
    out: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(resp.content.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(scraped: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


# --- who may scrape --------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_refuses_anonymous_access_when_a_token_is_set(client, settings):
    settings.IAC_METRICS_TOKEN = "s3cret-metrics"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Basic s3cret-metrics").status_code == 401
    resp = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-metrics", REMOTE_ADDR="10.1.2.3")
    assert resp.status_code == 200
    assert b"# TYPE iac_confirm_to_apply_start_seconds histogram" in resp.content


@pytest.mark.django_db
def test_it_refuses_a_loopback_client_without_the_token(client):
    """User code on an agent sharing the web's host reaches loopback too: being local is not
    enough, there is always a token (a random one in <var>/metrics_token when unset)."""
    for address in ("127.0.0.1", "::1"):
        refused = client.get("/metrics", REMOTE_ADDR=address)
        assert refused.status_code == 401, address
        assert "metrics_token" in refused.json()["detail"]
    if not os.environ.get("IAC_METRICS_TOKEN"):
        token_file = django_settings.VAR_DIR / "metrics_token"
        assert token_file.read_text().strip() == django_settings.IAC_METRICS_TOKEN
        assert token_file.stat().st_mode & 0o077 == 0, "the token file is the owner's alone"
    assert scrape(client).status_code == 200


@pytest.mark.django_db
def test_it_refuses_everyone_when_the_token_is_blank(client, settings):
    settings.IAC_METRICS_TOKEN = ""
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401


@pytest.mark.django_db
def test_it_refuses_a_post(client):
    assert client.post("/metrics").status_code == 405


# --- gauges from the database --------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # a run's plan job is queued after its commit
def test_it_reports_runs_jobs_agents_and_slots_from_the_database(client):
    pool, _ = make_pool(name="gauges")
    make_pool(name="empty")
    for _ in range(3):
        ws = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
        run_create(workspace=ws, operation="plan", actor="test")
    make_agent(pool=pool, name="g1", slots=3)
    offline, _ = make_agent(pool=pool, name="g2", slots=2)
    Agent.objects.filter(id=offline.id).update(status="offline")

    scraped = samples(client)
    assert value(scraped, "iac_runs", status="plan_queued") == 3
    assert value(scraped, "iac_runs", status="applied") == 0, "every status is exported, zeros too"
    assert value(scraped, "iac_jobs", pool="gauges", kind="plan", status="queued") == 3
    assert value(scraped, "iac_agents", pool="gauges", status="online") == 1
    assert value(scraped, "iac_agents", pool="gauges", status="offline") == 1
    assert value(scraped, "iac_slots", pool="gauges", state="idle") == 3, "only online agents' slots"
    assert value(scraped, "iac_slots", pool="empty", state="idle") == 0
    assert ("iac_agents", frozenset({"pool": "empty", "status": "online"}.items())) in scraped, "zeros are exported"

    Job.objects.filter(pool=pool).update(status="cancelled")
    scraped = samples(client)
    assert value(scraped, "iac_jobs", pool="gauges", kind="plan", status="queued") == 0
    assert value(scraped, "iac_jobs", pool="gauges", kind="plan", status="cancelled") == 3


# --- observations ------------------------------------------------------------------------------
# These commit (on_commit callbacks run only then) and read the process's registry before and
# after: other tests may have observed too, so each checks the difference.


@pytest.mark.django_db(transaction=True)
def test_it_observes_confirm_latency_by_path_when_the_apply_starts_and_logs(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    task = apply_pending(setup, a1)
    before = samples(client)
    run_confirm(task_id=task.id, actor="test")
    apply = a1.claim()
    assert apply["kind"] == "apply"
    started = time.time()
    resp = a1.post(f"/agent/v1/jobs/{apply['id']}/logs", {
        "seq": 1, "events": {"ack": True, "apply_started_at": started, "apply_path": "fast"},
    }, fence=apply["fence"])
    assert resp.status_code == 200, resp.content
    middle = samples(client)
    assert value(middle, "iac_confirm_to_apply_start_seconds_count", path="fast") == (
        value(before, "iac_confirm_to_apply_start_seconds_count", path="fast") + 1
    )
    assert value(middle, "iac_confirm_to_first_apply_log_seconds_count", path="fast") == (
        value(before, "iac_confirm_to_first_apply_log_seconds_count", path="fast")
    ), "no line yet"

    for seq, line in ((2, "terraform_data.demo: Creating...\n"), (3, "Apply complete!\n")):
        a1.post(f"/agent/v1/jobs/{apply['id']}/logs", {"seq": seq, "text": line}, fence=apply["fence"])
    after = samples(client)
    assert value(after, "iac_confirm_to_first_apply_log_seconds_count", path="fast") == (
        value(before, "iac_confirm_to_first_apply_log_seconds_count", path="fast") + 1
    ), "the first line only"
    assert value(after, "iac_confirm_to_apply_start_seconds_count", path="fast") == (
        value(middle, "iac_confirm_to_apply_start_seconds_count", path="fast")
    )
    assert value(after, "iac_confirm_to_apply_start_seconds_count", path="cold") == (
        value(before, "iac_confirm_to_apply_start_seconds_count", path="cold")
    )


@pytest.mark.django_db(transaction=True)
def test_it_observes_queue_wait_by_pool_and_kind_but_not_for_a_pushed_apply(setup, client):
    pool = setup[0]
    a1 = FakeAgent(client, setup[1], "a1")
    before = samples(client)
    task = apply_pending(setup, a1)  # a queued plan, claimed
    run_confirm(task_id=task.id, actor="test")  # the apply: created assigned, pushed
    assert a1.claim()["kind"] == "apply"
    after = samples(client)
    assert value(after, "iac_job_queue_wait_seconds_count", pool=pool.name, kind="plan") == (
        value(before, "iac_job_queue_wait_seconds_count", pool=pool.name, kind="plan") + 1
    )
    assert value(after, "iac_job_queue_wait_seconds_count", pool=pool.name, kind="apply") == 0


@pytest.mark.django_db(transaction=True)
def test_it_counts_warmups_by_outcome_with_their_duration(setup, client):
    pool, token, ws = setup
    a1 = FakeAgent(client, token, "a1")
    before = samples(client)
    for outcome in ("succeeded", "failed"):
        task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
        plan = a1.claim()
        a1.plan(plan, keep=False)  # no kept dir: a warmup is queued
        warmup = a1.claim()
        assert warmup["kind"] == "warmup" and warmup["task"]["id"] == task.id
        if outcome == "succeeded":
            a1.finish(warmup, kept_dir=True)
        else:
            a1.finish(warmup, "failed", error="init failed")
        run_discard(task_id=task.id, actor="test")  # frees the slot for the next round
    after = samples(client)
    for outcome in ("succeeded", "failed"):
        assert value(after, "iac_warmups_total", outcome=outcome) == value(before, "iac_warmups_total", outcome=outcome) + 1
        assert value(after, "iac_warmup_duration_seconds_count", outcome=outcome) == (
            value(before, "iac_warmup_duration_seconds_count", outcome=outcome) + 1
        )
    assert value(after, "iac_job_queue_wait_seconds_count", pool=pool.name, kind="warmup") == (
        value(before, "iac_job_queue_wait_seconds_count", pool=pool.name, kind="warmup") + 2
    )


@pytest.mark.django_db
def test_it_times_state_backend_requests_and_counts_lock_conflicts(client, alice, pool):
    ws = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    auth = "Basic " + base64.b64encode(f"tf:{make_token(alice)}".encode()).decode()
    url = f"/api/v1/workspaces/{ws.id}/state/lock"

    def lock(lock_id: str) -> int:
        info = {"ID": lock_id, "Operation": "OperationTypeApply", "Who": "alice", "Version": "1.11.4"}
        return client.generic("LOCK", url, json.dumps(info), content_type="application/json",
                              HTTP_AUTHORIZATION=auth).status_code

    before = samples(client)
    assert lock("one") == 200
    assert lock("two") == 423
    assert client.get(f"/api/v1/workspaces/{ws.id}/state", HTTP_AUTHORIZATION=auth).status_code == 204
    after = samples(client)
    assert value(after, "iac_state_backend_lock_conflicts_total") == value(before, "iac_state_backend_lock_conflicts_total") + 1
    for method, status in (("LOCK", "200"), ("LOCK", "423"), ("GET", "204")):
        assert value(after, "iac_state_backend_request_seconds_count", method=method, status=status) == (
            value(before, "iac_state_backend_request_seconds_count", method=method, status=status) + 1
        )


# --- the Grafana dashboard -----------------------------------------------------------------------


@pytest.mark.django_db
def test_it_exports_every_metric_the_grafana_dashboard_queries(client):
    dashboard = json.loads((Path(__file__).resolve().parent.parent / "docs" / "grafana" / "iac-platform.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queried = {name for expr in exprs for name in re.findall(r"\biac_[a-z_]+", expr)}
    # Families, not samples: a labelled histogram without observations has no samples yet.
    suffixes = {"histogram": ("_bucket", "_count", "_sum"), "counter": ("_total",), "gauge": ("",)}
    exported = {family.name + suffix for family in text_string_to_metric_families(scrape(client).content.decode())
                for suffix in suffixes.get(family.type, ())}
    assert queried and queried <= exported, f"queried but not exported: {sorted(queried - exported)}"


@pytest.mark.django_db
def test_it_counts_refused_webhooks_per_connection(client, api):
    from tests.vcs.forge import sign

    made = api.post("/api/v1/vcs-connections/", {"name": "gh", "kind": "github", "url": "https://github.com",
                                                 "token": "ghp_" + "x" * 36}, format="json")
    assert made.status_code == 201, made.content
    assert value(samples(client), "iac_webhook_deliveries_refused_total", connection="gh") == 0
    for signature in (None, sign("not-the-secret", b"{}")):
        headers = {"HTTP_X_GITHUB_EVENT": "push", "HTTP_X_GITHUB_DELIVERY": "d-1"}
        if signature:
            headers["HTTP_X_HUB_SIGNATURE_256"] = signature
        assert client.generic("POST", "/webhooks/gh/", b"{}", content_type="application/json",
                              **headers).status_code == 403
    assert value(samples(client), "iac_webhook_deliveries_refused_total", connection="gh") == 2
