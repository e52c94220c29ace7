"""The poll an agent makes right after an answer (its other slots are free) mostly finds
nothing: with nothing queued in its pool it costs one query, not agent_claim's locks and
queries. It still claims what is queued, and an agent marked offline still hears Gone."""

from __future__ import annotations

import pytest

from agents_app.protocol import AgentStatus
from agents_app.services.agents import agent_set_status
from iacplatform.errors import Gone
from tasks_app.services import control
from tasks_app.services.runs import run_create
from tests.factories import make_agent

pytestmark = pytest.mark.django_db


def test_it_answers_nothing_with_one_query_when_the_pool_has_nothing_queued(setup, django_assert_num_queries):
    pool, _, _ = setup
    agent, _ = make_agent(pool=pool, name="a1")
    with django_assert_num_queries(1):
        assert control.agent_claim_if_queued(agent=agent, limit=3) == []


def test_it_claims_what_is_queued(setup):
    pool, _, ws = setup
    agent, _ = make_agent(pool=pool, name="a1")
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    control.sweep()  # run_create's start is an after-commit callback (never run in these tests)
    [job] = control.agent_claim_if_queued(agent=agent, limit=3)
    assert job["kind"] == "plan" and job["task"]["id"] == task.id
    assert control.agent_claim_if_queued(agent=agent, limit=3) == []


def test_an_agent_marked_offline_hears_gone_even_with_nothing_queued(setup):
    pool, _, _ = setup
    agent, _ = make_agent(pool=pool, name="a1")
    agent_set_status(agent, AgentStatus.OFFLINE, reason="test: silent")
    with pytest.raises(Gone):
        control.agent_claim_if_queued(agent=agent, limit=1)
