"""The poll an agent makes right after an answer (its other slots are free) mostly finds
nothing: with nothing queued in its pool it costs one query, not agent_claim's locks and
queries. It still claims what is queued, and an agent marked offline still hears Gone."""

from __future__ import annotations

import pytest

from agents_app.protocol import AgentStatus
from agents_app.services.agents import agent_set_status
from iacplatform.errors import Gone
from iacplatform.unit_of_work import unit_of_work
from tasks_app.dispatch import agent_reports
from tasks_app.services import sweep
from tasks_app.services.runs import run_create
from tests.factories import make_agent

pytestmark = pytest.mark.django_db


def test_it_answers_nothing_with_one_query_when_the_pool_has_nothing_queued(setup, django_assert_num_queries):
    pool, _, _ = setup
    agent, _ = make_agent(pool=pool, name="a1")
    with django_assert_num_queries(1):
        assert agent_reports.agent_claim_if_queued(agent=agent, limit=3) == []


def test_it_claims_what_is_queued(setup):
    pool, _, ws = setup
    agent, _ = make_agent(pool=pool, name="a1")
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()  # run_create's start is an after-commit callback (never run in these tests)
    [job] = agent_reports.agent_claim_if_queued(agent=agent, limit=3)
    assert job["kind"] == "plan" and job["task"]["id"] == task.id
    assert agent_reports.agent_claim_if_queued(agent=agent, limit=3) == []


def test_an_agent_marked_offline_hears_gone_even_with_nothing_queued(setup):
    pool, _, _ = setup
    agent, _ = make_agent(pool=pool, name="a1")
    with unit_of_work() as uow:
        agent_set_status(agent, AgentStatus.OFFLINE, uow=uow, reason="test: silent")
    with pytest.raises(Gone):
        agent_reports.agent_claim_if_queued(agent=agent, limit=1)


def test_a_claimed_plan_records_the_state_serial_it_is_made_against(setup):
    """Read with the locked run in the claim's query (a different serial at Confirm means a
    stale plan): the workspace's newest serial, or none before its first state."""
    from tasks_app.models import StateVersion, Task

    pool, _, ws = setup
    agent, _ = make_agent(pool=pool, name="a1")
    first = run_create(workspace=ws, operation="plan", actor="test")
    sweep.sweep()
    agent_reports.agent_claim_if_queued(agent=agent, limit=1)
    for serial in (3, 7, 5):  # the newest is the highest serial, whatever the insert order
        StateVersion.objects.create(workspace=ws, serial=serial, lineage="l", sha256="0" * 64, size=0,
                                    encrypted_data=b"")
    second = run_create(workspace=ws, operation="plan", actor="test")
    sweep.sweep()
    agent_reports.agent_claim_if_queued(agent=agent, limit=1)
    assert Task.objects.get(id=first.id).base_state_serial is None
    assert Task.objects.get(id=second.id).base_state_serial == 7


def _queue_checks(queries) -> list[str]:
    """The small "is anything queued in the pool?" queries among `queries`."""
    return [q["sql"] for q in queries if q["sql"].startswith('SELECT 1 AS "a" FROM "tasks_app_job"')]


def test_a_woken_poll_that_takes_the_only_queued_job_asks_the_queue_nothing_more(setup):
    """Woken because work was queued, the poll claims at once (no "anything queued?" query
    first) and, having taken the pool's only queued job, answers without asking again."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    pool, _, ws = setup
    agent, _ = make_agent(pool=pool, name="a1")
    task = run_create(workspace=ws, operation="plan", actor="test")
    sweep.sweep()
    with CaptureQueriesContext(connection) as queries:
        [job] = agent_reports.agent_claim_if_queued(agent=agent, limit=3, woken=True)
    assert job["task"]["id"] == task.id
    assert _queue_checks(queries.captured_queries) == []


def test_one_claim_still_fills_its_free_slots_when_more_is_queued(setup):
    pool, _, ws = setup
    from tests.factories import DEMO_MAIN_TF, make_workspace

    agent, _ = make_agent(pool=pool, name="a1")
    other = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    tasks = {run_create(workspace=w, operation="plan", actor="test").id for w in (ws, other)}
    sweep.sweep()
    jobs = agent_reports.agent_claim_if_queued(agent=agent, limit=3, woken=True)
    assert {j["task"]["id"] for j in jobs} == tasks
