"""Plan affinity and the warm plan / provider cache reports, through the agent endpoints
(fake agents, no terraform): a queued plan prefers the agent holding its workspace's warm
plan dir, never at the cost of waiting when that agent has no free slot."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents_app.models import Agent
from tasks_app.dispatch.models import Job
from tasks_app.services.runs import run_create
from tests.agents_app.fakes import FakeAgent
from tests.factories import DEMO_MAIN_TF, make_workspace

pytestmark = pytest.mark.django_db(transaction=True)

CACHE = {"size_bytes": 25_000_000, "entries": 1, "hits": 4, "misses": 1, "installs": 1}


def holds(agent: FakeAgent, *workspaces: int) -> None:
    resp = agent.post("/agent/v1/heartbeat", {"warm_plan_workspaces": list(workspaces), "provider_cache": CACHE})
    assert resp.status_code == 200, resp.content


def test_it_gives_a_plan_to_the_agent_holding_its_workspace_warm(setup, client):
    _, token, ws = setup
    a1, a2 = FakeAgent(client, token, "a1"), FakeAgent(client, token, "a2")
    holds(a1, ws.id)
    run_create(workspace=ws, operation="plan", actor="test")

    assert a2.claim() is None  # left to a1 for the affinity wait
    job = a1.claim()
    assert job is not None and job["kind"] == "plan" and job["task"]["workspace"] == ws.id


def test_it_lets_any_agent_take_the_plan_after_the_affinity_wait(setup, client, settings):
    _, token, ws = setup
    a1, a2 = FakeAgent(client, token, "a1"), FakeAgent(client, token, "a2")
    holds(a1, ws.id)
    task = run_create(workspace=ws, operation="plan", actor="test")
    assert a2.claim() is None
    Job.objects.filter(task=task).update(created_at=timezone.now() - timedelta(
        seconds=settings.IAC_PLAN_AFFINITY_WAIT_SECONDS + 0.5))

    job = a2.claim()
    assert job is not None and job["task"]["id"] == task.id


def test_it_never_waits_for_a_holder_without_a_free_slot(setup, client):
    pool, token, ws = setup
    a1, a2 = FakeAgent(client, token, "a1", slots=1), FakeAgent(client, token, "a2")
    holds(a1, ws.id)
    busy = run_create(workspace=make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF}), operation="plan",
                      actor="test")
    assert a1.claim()["task"]["id"] == busy.id  # a1's only slot is taken
    task = run_create(workspace=ws, operation="plan", actor="test")

    job = a2.claim()
    assert job is not None and job["task"]["id"] == task.id


def test_it_records_the_cache_counters_and_a_kept_warm_plan_dir(setup, client, api, alice):
    pool, token, ws = setup
    a1 = FakeAgent(client, token, "a1")
    holds(a1)
    assert Agent.objects.get(id=a1.id).provider_cache == CACHE
    # An older agent's heartbeat (no such fields) leaves them as they were.
    assert a1.post("/agent/v1/heartbeat", {}).status_code == 200
    assert Agent.objects.get(id=a1.id).provider_cache == CACHE

    run_create(workspace=ws, operation="plan", actor="test")
    job = a1.claim()
    resp = a1.post(f"/agent/v1/jobs/{job['id']}/finish", {
        "outcome": "failed", "error": "x", "plan_start": "warm", "plan_start_reason": "unchanged",
        "warm_plan_kept": True}, fence=job["fence"])
    assert resp.status_code == 200, resp.content

    assert Agent.objects.get(id=a1.id).warm_plan_workspaces == [ws.id]
    saved = Job.objects.get(id=job["id"])
    assert (saved.plan_start, saved.plan_start_reason) == ("warm", "unchanged")
    agents = api.get(f"/api/v1/pools/{pool.id}/agents/").json()
    listed = agents["results"] if isinstance(agents, dict) else agents
    assert listed[0]["provider_cache"] == CACHE and listed[0]["warm_plan_workspaces"] == [ws.id]
    run = api.get(f"/api/v1/runs/{job['task']['id']}/").json()
    assert (run["plan_start"], run["plan_start_reason"]) == ("warm", "unchanged")
    client.force_login(alice)
    page = client.get(f"/runs/{job['task']['id']}/").content.decode()
    assert '<td class="job-start">warm: unchanged</td>' in page  # the run page's jobs table
    pool_page = " ".join(client.get(f"/pools/{pool.id}/").content.decode().split())
    assert "provider cache 23.8 MB, 1 entry, 4 hits, 1 miss · 1 warm plan dir" in pool_page


def test_a_heartbeat_built_before_a_plan_kept_its_dir_does_not_undo_it(setup, client):
    """The agent's heartbeat thread builds a heartbeat (list version 4, without the
    workspace), then a plan keeps its dir (version 5) and its result lands first: the late
    heartbeat must not take the workspace off the list, or its next plan goes cold
    elsewhere. The list is recorded before the run shows its plan."""
    _, token, ws = setup
    a1, a2 = FakeAgent(client, token, "a1"), FakeAgent(client, token, "a2")
    run_create(workspace=ws, operation="plan", actor="test")
    job = a1.claim()
    resp = a1.post(f"/agent/v1/jobs/{job['id']}/finish", {
        "outcome": "failed", "error": "x", "warm_plan_kept": True, "warm_plan_workspaces": [ws.id],
        "warm_plans_version": 5}, fence=job["fence"])
    assert resp.status_code == 200, resp.content
    late = a1.post("/agent/v1/heartbeat", {"warm_plan_workspaces": [], "warm_plans_version": 4})
    assert late.status_code == 200, late.content
    assert Agent.objects.get(id=a1.id).warm_plan_workspaces == [ws.id]

    run_create(workspace=ws, operation="plan", actor="test")
    assert a2.claim() is None  # left to a1, which holds it warm
    assert a1.claim()["task"]["workspace"] == ws.id

    # A newer heartbeat (the dir evicted since) is the truth again; an older result is not.
    assert a1.post("/agent/v1/heartbeat", {"warm_plan_workspaces": [], "warm_plans_version": 6}).status_code == 200
    assert Agent.objects.get(id=a1.id).warm_plan_workspaces == []
    assert a1.post("/agent/v1/jobs/0/finish", {"outcome": "failed", "warm_plan_kept": True,
                                               "warm_plan_workspaces": [ws.id], "warm_plans_version": 3},
                   fence=1).status_code == 409  # not its job; its (older) list is not taken either
    assert Agent.objects.get(id=a1.id).warm_plan_workspaces == []


def test_it_refuses_a_bad_plan_start_and_changes_nothing(setup, client):
    _, token, ws = setup
    a1 = FakeAgent(client, token, "a1")
    run_create(workspace=ws, operation="plan", actor="test")
    job = a1.claim()
    resp = a1.post(f"/agent/v1/jobs/{job['id']}/finish", {"outcome": "succeeded", "plan_start": "lukewarm"},
                   fence=job["fence"])
    assert resp.status_code == 400 and "plan_start" in resp.json()["detail"]
    assert Job.objects.get(id=job["id"]).status == "running"


def test_affinity_is_a_head_start_not_a_jump_over_every_older_plan(setup, client, settings):
    """An agent prefers the plans of the workspaces it holds warm by
    IAC_PLAN_AFFINITY_WAIT_SECONDS, no more: a plan queued longer ago than that goes first.
    Ranked first outright, the workspaces an agent kept cycling starved the others (a
    workspace's first plan waited 60-105 s on the dispatch benchmark)."""
    settings.IAC_PLAN_AFFINITY_WAIT_SECONDS = 2
    pool, token, ws = setup
    a1 = FakeAgent(client, token, "a1", slots=1)
    holds(a1, ws.id)
    other = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    older = run_create(workspace=other, operation="plan", actor="test")
    warm = run_create(workspace=ws, operation="plan", actor="test")
    # The other workspace's plan was queued 5 s before the warm one: it goes first.
    Job.objects.filter(task=older).update(created_at=timezone.now() - timedelta(seconds=5))
    first = a1.claim()
    assert first["task"]["id"] == older.id

    later = run_create(workspace=make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF}),
                       operation="plan", actor="test")
    Job.objects.filter(task=later).update(created_at=timezone.now() - timedelta(seconds=1))
    a1.finish(first, "failed", error="test")  # its one slot is free again
    # Queued 1 s before the warm plan: within the head start, the warm plan goes first.
    assert a1.claim()["task"]["id"] == warm.id
