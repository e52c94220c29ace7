"""Run triggers through real runs: workspace A's apply queues a plan_and_apply on B, which names
A's run as its reason; a trigger that would close a cycle is refused when it is made."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client

from tests.factories import DEMO_MAIN_TF
from tests.live import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_it_plans_the_consumer_when_a_source_applies_and_refuses_a_cycle(scenario, alice, tmp_path):
    s = scenario()
    s.agent("a1")
    user = s.user
    a = s.workspace
    b = user.create_workspace(f"net-consumer-{uuid.uuid4().hex[:6]}", s.pool.id, {"main.tf": DEMO_MAIN_TF},
                              {"marker_file": str(tmp_path / "b-applied.txt")})
    listed = user.request("POST", f"/api/v1/workspaces/{b['id']}/run-triggers/", expect=201,
                          json={"source": a["id"]}).json()
    assert listed == [{"source": a["id"], "source_name": a["name"]}]

    # B → A would make A → B → A: refused, with the chain, and nothing written.
    refused = user.request("POST", f"/api/v1/workspaces/{a['id']}/run-triggers/", expect=400,
                           json={"source": b["id"]})
    assert "cycle" in refused.json()["detail"] and f"{a['name']} → {b['name']} → {a['name']}" in refused.json()["detail"]
    assert user.request("GET", f"/api/v1/workspaces/{a['id']}/run-triggers/", expect=200).json() == []

    run = user.queue(a["id"])
    user.wait(run["id"], "apply_pending")
    assert user.confirm(run["id"]).status_code == 200
    user.wait(run["id"], "applied", timeout=90)

    def triggered() -> dict | None:
        runs = user.request("GET", f"/api/v1/workspaces/{b['id']}/runs/", expect=200).json()
        runs = runs["results"] if isinstance(runs, dict) else runs
        return runs[0] if runs else None

    b_run = wait_for(triggered, 30, "the run trigger to queue a run on B")
    assert b_run["operation"] == "plan_and_apply" and b_run["triggered_by"] == run["id"]
    assert f"triggered by run {run['id']} of workspace '{a['name']}'" in b_run["message"]
    b_run = user.wait(b_run["id"], "apply_pending")
    page = Client()
    page.force_login(alice)
    assert f"run {run['id']}</a> of {a['name']}" in page.get(f"/runs/{b_run['id']}/").content.decode()

    # A plan of A that changes nothing does not trigger B again.
    plan = user.queue(a["id"], "plan")
    user.wait(plan["id"], "planned_no_changes")
    runs = user.request("GET", f"/api/v1/workspaces/{b['id']}/runs/", expect=200).json()
    assert len(runs["results"] if isinstance(runs, dict) else runs) == 1
