"""Offline detection counts only silence the platform could have heard: an agent is not
declared offline because web was down (killed, restarting, being deployed) or the database
was (the sweep stopped, and so did the recording of heartbeats)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents_app.models import Agent
from tasks_app.models import SweepHeartbeat
from tasks_app.services import sweep
from tests.factories import make_agent, make_pool

pytestmark = pytest.mark.django_db


@pytest.fixture
def silent(settings) -> Agent:
    settings.IAC_AGENT_OFFLINE_AFTER_SECONDS = 4
    settings.IAC_SWEEP_INTERVAL_SECONDS = 1
    pool, _ = make_pool()
    agent, _ = make_agent(pool=pool)
    Agent.objects.filter(id=agent.id).update(last_heartbeat_at=ago(10))
    # This test's own view of the control plane (a session-wide e2e worker sweeps the same
    # database; the test's transaction hides its rows from it and replaces them here).
    SweepHeartbeat.objects.filter(id__in=[SweepHeartbeat.WEB_SEEN, SweepHeartbeat.HEARD_SINCE]).delete()
    return agent


def ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


def mark(row: int, at) -> None:
    SweepHeartbeat.objects.update_or_create(id=row, defaults={"finished_at": at})


def status(agent: Agent) -> str:
    return Agent.objects.get(id=agent.id).status


def test_a_silent_agent_goes_offline_while_web_is_up(silent):
    mark(SweepHeartbeat.WEB_SEEN, ago(0.5))
    mark(SweepHeartbeat.HEARD_SINCE, ago(60))
    assert sweep.step_offline() == [silent.id]
    assert status(silent) == "offline"


def test_without_web_ticks_recorded_every_silence_counts(silent):
    assert sweep.step_offline() == [silent.id]


def test_no_agent_goes_offline_while_no_web_process_is_up(silent):
    mark(SweepHeartbeat.WEB_SEEN, ago(5))  # web stopped ticking: killed, or being deployed
    mark(SweepHeartbeat.HEARD_SINCE, ago(60))
    assert sweep.step_offline() == []
    assert status(silent) == "online"


def test_silence_counts_from_the_moment_web_came_back(silent):
    mark(SweepHeartbeat.WEB_SEEN, ago(5))
    sweep.web_alive()  # web is back after a gap: agents get the full timeout to reach it
    heard_since = SweepHeartbeat.objects.get(id=SweepHeartbeat.HEARD_SINCE).finished_at
    assert (timezone.now() - heard_since).total_seconds() < 1
    assert sweep.step_offline() == []
    mark(SweepHeartbeat.HEARD_SINCE, ago(4.5))  # the timeout passed since, still silent
    assert sweep.step_offline() == [silent.id]


def test_a_web_process_starting_restarts_the_count_and_a_steady_tick_does_not(silent):
    mark(SweepHeartbeat.WEB_SEEN, ago(0.5))
    mark(SweepHeartbeat.HEARD_SINCE, ago(60))
    sweep.web_alive()
    assert SweepHeartbeat.objects.get(id=SweepHeartbeat.HEARD_SINCE).finished_at < ago(59)
    sweep.web_alive(starting=True)
    assert SweepHeartbeat.objects.get(id=SweepHeartbeat.HEARD_SINCE).finished_at > ago(1)


def test_a_sweep_after_a_database_outage_does_not_count_the_outage(silent):
    mark(SweepHeartbeat.WEB_SEEN, ago(0.5))
    mark(SweepHeartbeat.HEARD_SINCE, ago(60))
    mark(SweepHeartbeat.CELERY, ago(30))  # nothing swept for 30 s: PostgreSQL was down
    mark(SweepHeartbeat.WEB, ago(30))
    sweep.sweep_resumed()  # what every sweep does first
    assert SweepHeartbeat.objects.get(id=SweepHeartbeat.HEARD_SINCE).finished_at > ago(1)
    assert sweep.step_offline() == []
    assert status(silent) == "online"


def test_a_sweep_without_a_gap_leaves_the_count_alone(silent):
    mark(SweepHeartbeat.HEARD_SINCE, ago(60))
    mark(SweepHeartbeat.CELERY, ago(1))
    sweep.sweep_resumed()
    assert SweepHeartbeat.objects.get(id=SweepHeartbeat.HEARD_SINCE).finished_at < ago(59)


def test_a_lease_that_ran_out_while_agents_could_not_reach_the_platform_is_kept(silent):
    from tasks_app.dispatch.models import Job
    from tasks_app.services.runs import run_create, runs_start_next
    from tests.agents_app.test_bounds import claim
    from tests.factories import DEMO_MAIN_TF, make_workspace

    Agent.objects.filter(id=silent.id).update(last_heartbeat_at=timezone.now())
    ws = make_workspace(pool=silent.pool, files={"main.tf": DEMO_MAIN_TF})
    run_create(workspace=ws, operation="plan_and_apply", actor="test")
    runs_start_next(workspace_id=ws.id)
    job = claim(silent)
    Job.objects.filter(id=job["id"]).update(lease_expires_at=ago(1))
    mark(SweepHeartbeat.WEB_SEEN, ago(5))  # web is down: the heartbeats that renew leases cannot arrive
    mark(SweepHeartbeat.HEARD_SINCE, ago(60))
    assert sweep.step_leases() == []
    mark(SweepHeartbeat.WEB_SEEN, ago(0.5))
    mark(SweepHeartbeat.HEARD_SINCE, ago(2))  # web came back 2 s ago: agents get the full timeout
    assert sweep.step_leases() == []
    mark(SweepHeartbeat.HEARD_SINCE, ago(60))
    assert sweep.step_leases() == [job["id"]]
    assert Job.objects.get(id=job["id"]).status == "queued"  # a plan goes back to the queue
