"""Cancel is pushed to the agent's claim long-poll the moment it commits, and repeated by the
heartbeat, which alone carries it while Redis is down (the end-to-end timing with a real
agent and terraform: tests/e2e/test_cancel_push.py)."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from iacplatform import wakeups
from tasks_app.dispatch.models import Job
from tasks_app.services.runs import run_cancel, run_create
from tests.agents_app.fakes import FakeAgent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_gone(settings, tmp_path):
    """Redis at a socket nobody listens on (as in tests/test_redis_down.py)."""
    settings.REDIS_URL = f"unix://{tmp_path}/no-redis-here.sock"
    wakeups.breaker.reset()
    yield
    wakeups.breaker.reset()


def _running_plan(setup, client, name: str) -> tuple[FakeAgent, int, dict]:
    _pool, token, ws = setup
    agent = FakeAgent(client, token, name)
    task = run_create(workspace=ws, operation="plan", actor="test")
    job = agent.claim()
    assert job is not None and job["kind"] == "plan"
    return agent, task.id, job


def test_it_wakes_the_agents_waiting_claim_with_the_cancel_order(setup, client, alice):
    agent, task_id, job = _running_plan(setup, client, "runner")

    def cancel() -> None:
        try:
            run_cancel(task_id=task_id, actor=alice)
        finally:
            connection.close()

    timer = threading.Timer(0.3, cancel)
    start = time.monotonic()
    timer.start()
    resp = agent.post("/agent/v1/claim?wait=8&max=1")  # the agent's long-poll, waiting
    took = time.monotonic() - start
    timer.join()
    assert resp.status_code == 200, resp.content
    assert resp.json() == {"jobs": [], "cancel": [{"id": job["id"], "force": False, "grace": None}]}
    assert took < 2.0, f"the waiting claim answered the cancel after {took:.2f}s"
    # Handed out once; the heartbeat repeats it until the job ends.
    assert agent.post("/agent/v1/claim?wait=0").status_code == 204
    beat = agent.post("/agent/v1/heartbeat", {"running_jobs": [job["id"]], "warm_dirs": []}).json()
    assert beat["cancel"] == [{"id": job["id"], "force": False, "grace": None}]


def test_it_still_orders_the_cancel_through_the_heartbeat_when_redis_is_down(setup, client, alice, redis_gone):
    agent, task_id, job = _running_plan(setup, client, "runner-no-redis")

    task = run_cancel(task_id=task_id, actor=alice, force=True)  # the push fails quietly
    assert task.status == "planning", "the run ends when the agent reports the job stopped"
    assert Job.objects.get(id=job["id"]).cancel_requested
    beat = agent.post("/agent/v1/heartbeat", {"running_jobs": [job["id"]], "warm_dirs": []})
    assert beat.status_code == 200, beat.content
    assert beat.json()["cancel"] == [{"id": job["id"], "force": True, "grace": None}]


def take(agent_id: int, limit: int, poll: str) -> tuple[list[dict], list[dict]]:
    """One poll's take (wakeups.take_all) on a client of its own."""
    import asyncio

    async def run():
        client = wakeups.async_client()
        try:
            return await wakeups.take_all(client, agent_id, limit, poll)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_one_take_hands_out_the_pushed_jobs_then_the_orders_each_once():
    """A poll's take is one round trip: up to its free slots' worth of pushed jobs (a push
    whose payload expired is skipped), then every cancel order; nothing twice."""
    agent_id = 987654
    for job_id in (1, 2, 3):
        assert wakeups.push_job(agent_id, job_id, {"id": job_id})
    wakeups._client().delete(wakeups.pushed_key(1))  # expired: its id is still in the list
    assert wakeups.push_cancel(agent_id, {"id": 7, "force": False})

    assert take(agent_id, 1, "poll-a") == ([{"id": 2}], [{"id": 7, "force": False}])
    assert take(agent_id, 3, "poll-b") == ([{"id": 3}], [])
    assert take(agent_id, 3, "poll-c") == ([], [])


def test_a_take_whose_answer_was_lost_is_handed_out_again_to_the_same_poll_only():
    """A take is a script: Redis runs it (the payload leaves the agent's list) even when its
    answer never reaches the web process (a read timeout under load). The poll tries again at
    once and gets the same job, with anything pushed since; another poll never gets it."""
    agent_id = 987655
    assert wakeups.push_job(agent_id, 11, {"id": 11})

    assert take(agent_id, 3, "lost-answer") == ([{"id": 11}], [])  # pretend this answer was lost
    assert wakeups.push_job(agent_id, 12, {"id": 12})
    assert take(agent_id, 3, "another-poll") == ([{"id": 12}], [])
    assert take(agent_id, 3, "lost-answer") == ([{"id": 11}], [])  # the retry: the same job again
    assert wakeups.take_back(agent_id, 11) is False  # taken: the sweep cannot send it elsewhere
