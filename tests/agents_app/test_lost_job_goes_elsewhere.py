"""A job its agent lost while it stayed online (its lease ran out, its heartbeats stopped
reporting it) goes to the pool's other agents first. An agent that can still claim but no
longer report (a half-broken network path) would otherwise win the job back every time: the
workspace's warm plan dir is there, so plan affinity sends the plan to it first."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tasks_app.dispatch import agent_reports
from tasks_app.dispatch.models import Job
from tasks_app.services import sweep
from tasks_app.services.runs import run_create
from tests.factories import make_agent

pytestmark = pytest.mark.django_db


@pytest.fixture
def lost_plan(setup):
    """A plan claimed by a1 (which holds the workspace's warm plan dir) and then lost."""
    pool, _, ws = setup
    a1, _ = make_agent(pool=pool, name="a1")
    a1.warm_plan_workspaces = [ws.id]
    a1.save(update_fields=["warm_plan_workspaces"])
    a2, _ = make_agent(pool=pool, name="a2")
    run = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()  # run_create's start is an after-commit callback (never run in these tests)
    [payload] = agent_reports.agent_claim_if_queued(agent=a1, limit=3)
    assert agent_reports.job_lost(job_id=payload["id"], why="the lease ran out (a1 stopped reporting it)")
    return run, a1, a2, Job.objects.get(id=payload["id"])


def test_the_agent_that_lost_a_plan_does_not_win_it_back_while_another_can_take_it(lost_plan):
    run, a1, a2, job = lost_plan
    assert job.status == "queued" and job.avoid_agent_id == a1.id
    assert agent_reports.agent_claim_if_queued(agent=a1, limit=3) == [], "a1 took back the plan it just lost"
    [payload] = agent_reports.agent_claim_if_queued(agent=a2, limit=3)
    assert payload["id"] == job.id and payload["task"]["id"] == run.id
    job.refresh_from_db()
    assert job.agent_id == a2.id and job.fence == 2


def test_the_agent_may_take_it_again_once_the_others_had_their_chance(lost_plan):
    run, a1, _, job = lost_plan
    Job.objects.filter(id=job.id).update(avoid_until=timezone.now() - timedelta(seconds=1))
    [payload] = agent_reports.agent_claim_if_queued(agent=a1, limit=3)
    assert payload["id"] == job.id and payload["fence"] == 2


def test_alone_in_its_pool_the_agent_takes_it_again_at_once(setup):
    pool, _, ws = setup
    a1, _ = make_agent(pool=pool, name="a1")
    run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()
    [payload] = agent_reports.agent_claim_if_queued(agent=a1, limit=3)
    assert agent_reports.job_lost(job_id=payload["id"], why="the lease ran out")
    [again] = agent_reports.agent_claim_if_queued(agent=a1, limit=3)
    assert again["id"] == payload["id"] and again["fence"] == 2
