"""Confirm's fast path hands the apply to its warm agent through Redis, and Redis never holds a
secret in clear: the pushed payload (sensitive variables, the job's state credential) is
sealed with a key Redis never sees, and opened by the agent's long-poll that takes it.
Anyone who can read Redis (terraform in a Kubernetes agent pod running MONITOR against a
shared Redis) learns nothing of it, and cannot forge a job. A push whose job moved on
meanwhile was withdrawn with it; the poll claims what the database holds."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings

from iacplatform import wakeups
from tasks_app.dispatch.models import DispatchEvent, Job
from tasks_app.services.runs import run_confirm
from tests.agents_app.fakes import FakeAgent, apply_pending

pytestmark = pytest.mark.django_db(transaction=True)


@contextlib.contextmanager
def redis_monitored() -> Iterator[list[str]]:
    """Every command Redis runs meanwhile (MONITOR on a connection of the test's own, scripts'
    commands included), as Redis prints them."""
    seen: list[str] = []
    stop = f"stop-monitor-{uuid.uuid4().hex}"
    started = threading.Event()
    client = redis.Redis.from_url(settings.REDIS_URL)

    def record() -> None:
        with client.monitor() as monitor:
            started.set()
            while True:
                command = monitor.next_command()["command"]
                if stop in command:
                    return
                seen.append(command)

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    assert started.wait(5)
    client.echo("monitor-started")  # MONITOR is in effect once this comes back through it
    try:
        yield seen
    finally:
        redis.Redis.from_url(settings.REDIS_URL).echo(stop)
        thread.join(10)
        client.close()


def redis_contents() -> str:
    """Every key of Redis with its value, whatever its type."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    parts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        value = {
            "string": lambda k: client.get(k),
            "list": lambda k: client.lrange(k, 0, -1),
            "hash": lambda k: client.hgetall(k),
            "set": lambda k: client.smembers(k),
            "zset": lambda k: client.zrange(k, 0, -1),
        }.get(kind, lambda k: b"")(key)
        parts.append(f"{key!r} {value!r}")
    client.close()
    return "\n".join(parts)


def basic(credential: str) -> str:
    return "Basic " + base64.b64encode(f"job:{credential}".encode()).decode()


def test_a_confirmed_apply_reaches_its_warm_agent_without_a_secret_passing_through_redis(setup, client, api):
    _, token, ws = setup
    secret = f"hunter2-{uuid.uuid4().hex}"
    env_secret = f"AKIA-{uuid.uuid4().hex}"
    for body in ({"key": "db_password", "value": secret, "sensitive": True},
                 {"key": "AWS_SECRET_ACCESS_KEY", "value": env_secret, "category": "env", "sensitive": True}):
        resp = api.post(f"/api/v1/workspaces/{ws.id}/variables/", body, format="json")
        assert resp.status_code == 201, resp.content
    agent = FakeAgent(client, token, "warm")
    task = apply_pending(setup, agent)  # the plan's dir is kept: the run is warm on this agent

    with redis_monitored() as commands:
        resp = api.post(f"/api/v1/runs/{task.id}/confirm/", {}, format="json")
        assert resp.status_code == 200, resp.content
        job_id = Job.objects.get(task=task, kind="apply").id
        waiting = redis_contents()  # the push, waiting for the agent's poll
        job = agent.claim()
    seen = "\n".join(commands)

    # The warm agent has the apply, on the fast path: assigned to it at Confirm and taken from
    # its push (the queue never had it), with everything it needs to run.
    assert job is not None and job["id"] == job_id and job["kind"] == "apply" and job["cold_reason"] == ""
    assert DispatchEvent.objects.filter(subject="job", subject_id=job_id,
                                        message="confirmed: warm dir reserved here").exists()
    assert f"iac:push:job:{job_id}" in waiting, "the push waited in Redis"
    assert f"GETDEL iac:push:job:{job_id}" in seen, "the agent's poll took the push"
    assert job["variables"]["terraform"]["db_password"] == secret
    assert job["variables"]["env"]["AWS_SECRET_ACCESS_KEY"] == env_secret
    assert sorted(job["sensitive_values"]) == sorted([secret, env_secret])
    credential = job["state_backend"]["password"]
    state = f"/api/v1/workspaces/{ws.id}/state"
    assert client.get(state, HTTP_AUTHORIZATION=basic(credential)).status_code != 401, "the credential works"

    # ... and none of it ever went through Redis.
    for what, value in (("the sensitive variable", secret), ("the sensitive env variable", env_secret),
                        ("the job's state credential", credential)):
        assert value not in waiting, f"{what} sat in Redis"
        assert value not in seen, f"{what} went through Redis"
        assert value not in redis_contents(), f"{what} is in Redis"


def test_a_push_whose_job_moved_on_hands_out_nothing_and_the_poll_claims_from_the_database(setup, client):
    """The agent's heartbeats did not report the pushed apply (it never got it): it went back
    to the queue, and its push, still in Redis, with it. The poll claims the apply from the
    queue, with a new fence, once."""
    _, token, ws = setup
    agent = FakeAgent(client, token, "warm")
    task = apply_pending(setup, agent)
    run_confirm(task_id=task.id, actor="test")  # pushed (the test client runs after-commit work)
    job = Job.objects.get(task=task, kind="apply")
    assert wakeups._client().get(wakeups.pushed_key(job.id)) is not None, "the push waits in Redis"
    for _ in range(2):
        beat = agent.post("/agent/v1/heartbeat", {"running_jobs": [], "warm_dirs": []})
        assert beat.status_code == 200, beat.content
    job.refresh_from_db()
    assert job.status == "queued", "two heartbeats without it: the apply went back to the queue"

    [got] = agent.claim_many(3)
    assert got["id"] == job.id and got["fence"] == job.fence + 1, "the stale push was handed out"
    assert agent.claim() is None, "handed out once"


def test_a_push_this_platform_did_not_seal_is_dropped(setup, client, caplog):
    """Someone who can write to Redis (a shared one) cannot hand an agent a job of their own."""
    _, token, _ = setup
    agent = FakeAgent(client, token, "warm")
    forged = {"id": 1, "kind": "apply", "fence": 1}
    wakeups._client().set(wakeups.pushed_key(424242), json.dumps(forged))
    wakeups._client().rpush(wakeups.pushed_list(agent.id), 424242)
    assert agent.claim() is None
    assert "a pushed job was dropped" in caplog.text
