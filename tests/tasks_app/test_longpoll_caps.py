"""Users' long-polls (`?wait=`) share the process's Redis connection and are capped per user
and per process: past a cap, 429 with Retry-After (tasks_app/longpoll.py)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.contrib.auth.models import User

from iacplatform import wakeups
from tasks_app.longpoll import waiting
from tasks_app.models import AccessLevel
from tasks_app.services.runs import run_create
from tests.factories import grant, make_token

pytestmark = pytest.mark.django_db(transaction=True)


async def _get(path: str, token: str) -> tuple[int, dict, dict]:
    from iacplatform.asgi import application

    path, _, query = path.partition("?")
    comm = ApplicationCommunicator(application, {
        "type": "http", "method": "GET", "path": path, "query_string": query.encode(),
        "headers": [(b"host", b"localhost"), (b"authorization", f"Token {token}".encode())],
        "scheme": "http", "server": ("127.0.0.1", 8000),
    })
    await comm.send_input({"type": "http.request", "body": b""})
    start = await comm.receive_output(60)
    chunks = []
    while True:
        message = await comm.receive_output(60)
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, json.loads(b"".join(chunks))


async def _until_waiting(n: int) -> None:
    """Until n polls wait (a synchronisation point, not an assertion)."""
    deadline = time.monotonic() + 30
    while waiting.total < n:
        assert time.monotonic() < deadline, f"{waiting.total} of {n} long-polls waiting"
        await asyncio.sleep(0.05)


@pytest.fixture
def run_and_users(workspace, alice):
    """A run that will not be applied while the test runs, alice's token and dave's (read)."""
    task = run_create(workspace=workspace, operation="plan_and_apply", actor=alice)
    dave = User.objects.create_user("dave", password="dave-password-1")
    grant(dave, workspace, AccessLevel.READ)
    return task, make_token(alice), make_token(dave)


def test_it_answers_429_with_retry_after_past_the_cap_per_user(settings, run_and_users):
    settings.IAC_LONGPOLL_MAX_PER_USER = 2
    task, alice, dave = run_and_users
    url = f"/api/v1/runs/{task.id}/?wait=4&until=applied"

    async def scenario():
        first = [asyncio.ensure_future(_get(url, alice)) for _ in range(2)]
        await _until_waiting(2)
        refused = await _get(url, alice)
        other_user = await _get(f"/api/v1/runs/{task.id}/?wait=0.5&until=applied", dave)
        answered = await asyncio.gather(*first)
        again = await _get(f"/api/v1/runs/{task.id}/?wait=0.5&until=applied", alice)
        return refused, other_user, answered, again

    refused, other_user, answered, again = asyncio.run(scenario())
    status, headers, body = refused
    assert status == 429
    assert headers["retry-after"].isdigit() and int(headers["retry-after"]) > 0
    assert "IAC_LONGPOLL_MAX_PER_USER" in body["detail"]
    assert other_user[0] == 200  # another user is not held to alice's cap
    assert [a[0] for a in answered] == [200, 200]  # the waiting ones answered as usual
    assert again[0] == 200  # their places were given back


def test_it_answers_429_past_the_cap_per_process(settings, run_and_users):
    settings.IAC_LONGPOLL_MAX_PER_PROCESS = 1
    task, alice, dave = run_and_users

    async def scenario():
        first = asyncio.ensure_future(_get(f"/api/v1/runs/{task.id}/?wait=3&until=applied", alice))
        await _until_waiting(1)
        refused = await _get(f"/api/v1/runs/{task.id}/?wait=3&until=applied", dave)
        await first
        return refused

    status, headers, body = asyncio.run(scenario())
    assert status == 429 and "Retry-After" in {k.title(): v for k, v in headers.items()}
    assert "IAC_LONGPOLL_MAX_PER_PROCESS" in body["detail"]


def test_a_run_already_there_answers_whatever_the_cap(settings, run_and_users):
    settings.IAC_LONGPOLL_MAX_PER_USER = 1
    task, alice, _ = run_and_users

    async def scenario():
        first = asyncio.ensure_future(_get(f"/api/v1/runs/{task.id}/?wait=3&until=applied", alice))
        await _until_waiting(1)
        _, _, now = await _get(f"/api/v1/runs/{task.id}/", alice)
        # Nothing to wait for: the run is already in the status asked for.
        there = await _get(f"/api/v1/runs/{task.id}/?wait=3&until={now['status']}", alice)
        await first
        return there

    status, _, body = asyncio.run(scenario())
    assert status == 200 and body["id"] == task.id


def test_many_waiting_polls_share_one_redis_subscription(run_and_users):
    task, alice, _ = run_and_users
    url = f"/api/v1/runs/{task.id}/?wait=3&until=applied"
    client = redis.Redis.from_url(settings.REDIS_URL)

    async def scenario():
        polls = [asyncio.ensure_future(_get(url, alice)) for _ in range(5)]
        await _until_waiting(5)
        subscribers = dict(client.pubsub_numsub(wakeups.run_channel(task.id)))
        answered = await asyncio.gather(*polls)
        return subscribers, answered

    subscribers, answered = asyncio.run(scenario())
    # One subscriber for five waiting polls: they share the process's connection.
    assert subscribers[wakeups.run_channel(task.id).encode()] == 1
    assert [a[0] for a in answered] == [200] * 5


def test_waiting_polls_still_answer_from_the_database_when_their_redis_dies(settings, run_and_users):
    """Redis costs speed, never correctness: the shared subscription's failure reaches every
    waiter, which then checks the run itself."""
    import os
    import shutil
    import signal
    import tempfile
    from pathlib import Path

    from iacplatform import embedded
    from tasks_app.models import Task

    task, alice, _ = run_and_users
    root = Path(tempfile.mkdtemp(prefix="iac-lp-"))
    sock = embedded.ensure_redis(root)
    settings.REDIS_URL = f"unix://{sock}"
    wakeups.breaker.reset()
    url = f"/api/v1/runs/{task.id}/?wait=30&until=cancelled"

    async def scenario():
        polls = [asyncio.ensure_future(_get(url, alice)) for _ in range(3)]
        await _until_waiting(3)
        os.kill(int((root / "redis" / "redis.pid").read_text()), signal.SIGKILL)
        # The status changes while no event can be published about it.
        await asyncio.to_thread(lambda: Task.objects.filter(id=task.id).update(status="cancelled"))
        return await asyncio.gather(*polls)

    try:
        answered = asyncio.run(scenario())
    finally:
        wakeups.breaker.reset()
        shutil.rmtree(root, ignore_errors=True)
    assert [(status, body["status"]) for status, _, body in answered] == [(200, "cancelled")] * 3
