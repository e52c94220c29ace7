"""Redis is an accelerator: with it unreachable, wake-ups and pushes fail fast and quietly,
Confirm answers 200 and its apply goes to the queue, the claim long-poll reads the database,
and the web processes' fallback sweep decides to run while Celery's sweep is stale.

"Unreachable" is a unix socket path where no server listens (the shared test Redis,
settings.REDIS_URL, is never touched). The end-to-end version, with a redis-server of the
test's own SIGKILLed under a running platform, is tests/e2e/test_redis_down.py."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis
from django.db import connection
from django.utils import timezone

from agents_app.models import Agent
from iacplatform import embedded, wakeups
from iacplatform.unit_of_work import unit_of_work
from tasks_app.dispatch.claim import claim_longpoll
from tasks_app.dispatch.models import Job
from tasks_app.models import SweepHeartbeat, Task
from tasks_app.services.runs import run_create
from tests.agents_app.fakes import FakeAgent, apply_pending, reservation
from tests.live import wait_for


@pytest.fixture
def redis_gone(settings, tmp_path):
    """settings.REDIS_URL (and the Channels layer) name a socket nobody listens on; the
    breaker starts closed.
    Yields the shared test Redis's URL."""
    shared = settings.REDIS_URL
    settings.REDIS_URL = f"unix://{tmp_path}/no-redis-here.sock"
    settings.CHANNEL_LAYERS = {"default": {**settings.CHANNEL_LAYERS["default"],
                                           "CONFIG": {"hosts": [{"address": settings.REDIS_URL}]}}}
    wakeups.breaker.reset()
    yield shared
    wakeups.breaker.reset()


# Pushes in these tests go to an agent no test database has: the shared test Redis is read
# by the live agents of e2e tests, which would take a stray push for a job.
NO_AGENT = 2_000_000_000


@contextlib.contextmanager
def private_redis(settings):
    """A redis-server of the test's own (to stop or pause), as settings.REDIS_URL, with the
    breaker closed; yields its pid; killed and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="iac-rt-"))  # short: a unix socket path has ~100 chars
    sock = embedded.ensure_redis(root)
    pid = int((root / "redis" / "redis.pid").read_text())
    settings.REDIS_URL = f"unix://{sock}"
    wakeups.breaker.reset()
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
        wakeups.breaker.reset()


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "iacplatform.wakeups" and r.levelno == logging.WARNING]


def test_wakeups_never_raise_and_cost_milliseconds_without_redis(redis_gone, caplog):
    caplog.set_level(logging.WARNING, logger="iacplatform.wakeups")
    start = time.monotonic()
    assert wakeups.push_job(NO_AGENT, 2, {"id": 2, "fence": 1}) is False
    first = time.monotonic() - start
    for _ in range(50):  # the breaker is open: no connection attempt at all
        wakeups.wake_agent(1)
        wakeups.wake_pool(1)
        assert wakeups.publish("iac:events:pool:1", "{}") is False
        assert wakeups.push_job(NO_AGENT, 2, {"id": 2, "fence": 1}) is False
    total = time.monotonic() - start
    assert first < 0.5, f"a failed push took {first:.3f}s"
    assert total < 0.6, f"201 calls without Redis took {total:.3f}s"
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings  # one line per outage, not per call
    assert "Redis unreachable" in warnings[0]


@pytest.mark.django_db(transaction=True)
def test_a_live_log_update_without_redis_neither_raises_nor_waits(redis_gone, caplog):
    from tasks_app import events

    caplog.set_level(logging.WARNING, logger="iacplatform.wakeups")
    start = time.monotonic()
    with unit_of_work() as uow:  # after its commit, the Channels layer's group_send fails: logged, not raised
        events.run_log_appended(uow, 1)
    assert time.monotonic() - start < 1.0
    assert not wakeups.redis_available()  # and the next calls skip Redis
    assert "a live log update" in _warnings(caplog)[0]


def test_wakeups_try_redis_again_after_the_breaker_pause(redis_gone, settings, caplog):
    caplog.set_level(logging.WARNING, logger="iacplatform.wakeups")
    # The push below reaches the shared test Redis: for an agent id no test database has, and
    # removed at the end (a live agent would take a stray push as a job).
    assert wakeups.push_job(NO_AGENT, 2, {"id": 2, "fence": 1}) is False
    # Redis is back (the shared test Redis), but the breaker skips it for a moment.
    settings.REDIS_URL = redis_gone
    assert wakeups.push_job(NO_AGENT, 2, {"id": 2, "fence": 1}) is False
    time.sleep(wakeups.BREAKER_SECONDS + 0.1)
    assert wakeups.push_job(NO_AGENT, 2, {"id": 2, "fence": 1}) is True
    assert wakeups.take_back(NO_AGENT, 2) is True
    assert any("Redis answers again" in w for w in _warnings(caplog))


def test_a_push_sent_to_a_hung_redis_is_not_reported_as_failed(settings, caplog):
    # Sent but unanswered, a push may still be executed (here: when the server resumes) and
    # taken by the agent: only a push that certainly did not reach Redis sends the apply to
    # the queue at once; late is not lost (the sweep's take-back or the heartbeats decide).
    # A hung server is told from a slow one by time: timeouts with nothing answered for
    # HUNG_AFTER_SECONDS open the breaker, and only then are pushes not sent.
    caplog.set_level(logging.WARNING, logger="iacplatform.wakeups")
    with private_redis(settings) as pid:
        assert wakeups.push_job(NO_AGENT, 101, {"id": 101, "fence": 1}) is True  # a pooled connection now
        os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        assert wakeups.push_job(NO_AGENT, 102, {"id": 102, "fence": 1}) is True  # sent: may arrive
        assert time.monotonic() - start < 1.5
        assert wakeups.redis_available(), "one timeout is a slow answer, not an outage"
        job_id = 103
        while wakeups.redis_available():  # pushes time out (sent or not: no connection could be made)
            assert time.monotonic() - start < wakeups.HUNG_AFTER_SECONDS + 2, "the breaker never opened"
            wakeups.push_job(NO_AGENT, job_id, {"id": job_id, "fence": 1})
            job_id += 1
        assert time.monotonic() - start >= wakeups.HUNG_AFTER_SECONDS
        unsent = job_id
        assert wakeups.push_job(NO_AGENT, unsent, {"id": unsent, "fence": 1}) is False  # the breaker: never sent
        os.kill(pid, signal.SIGCONT)
        direct = redis.Redis.from_url(settings.REDIS_URL)
        assert direct.get(wakeups.pushed_key(102)) is not None, "the unanswered push did arrive"
        assert direct.get(wakeups.pushed_key(unsent)) is None
        (warning,) = [w for w in _warnings(caplog) if "Redis unreachable" in w]
        assert "calls timed out and none was answered" in warning, warning


def test_a_slow_redis_answer_costs_only_that_call(settings, caplog):
    """Under CPU load an answer can come later than REDIS_TIMEOUT while Redis is fine. That
    is not an outage: the breaker stays closed, the next push reaches Redis (the warm agent
    gets its apply), and the log says what was seen, never an empty error. Before, one late
    live-page update ("live updates after a request failed: ") turned every push off for
    BREAKER_SECONDS, and on a busy pool three confirmed applies in four went cold."""
    caplog.set_level(logging.INFO, logger="iacplatform.wakeups")
    with private_redis(settings):
        direct = redis.Redis.from_url(settings.REDIS_URL)
        assert wakeups.publish("iac:test:slow", "warm-up") is True  # a pooled connection
        direct.execute_command("CLIENT", "PAUSE", 700, "ALL")  # Redis answers nobody for 0.7 s
        assert wakeups.publish("iac:test:slow", "late") is False  # this call times out...
        wakeups.redis_failed(TimeoutError(), "live updates after a request")  # ...as asyncio's wait_for does
        assert wakeups.redis_available(), "a slow answer opened the breaker"
        time.sleep(0.7)
        assert wakeups.push_job(NO_AGENT, 201, {"id": 201, "fence": 1}) is True
        assert direct.get(wakeups.pushed_key(201)) is not None, "the push after a slow answer reached Redis"
        assert not [w for w in _warnings(caplog) if "Redis unreachable" in w]
        slow = [r.getMessage() for r in caplog.records if "Redis slow" in r.getMessage()]
        assert slow and "TimeoutError" in slow[0], slow
        assert not any(m.rstrip().endswith(": )") for m in slow), slow


def test_an_empty_error_is_described_never_logged_empty(redis_gone, caplog):
    caplog.set_level(logging.WARNING, logger="iacplatform.wakeups")
    wakeups.redis_failed(redis.ConnectionError(), "a test call")  # a refused connection: down at once
    assert not wakeups.redis_available()
    (warning,) = _warnings(caplog)
    assert "a test call failed: ConnectionError)" in warning, warning


@pytest.mark.django_db(transaction=True)  # after-commit work runs, as in production
def test_confirm_answers_200_and_queues_the_apply_when_the_push_cannot_reach_redis(setup, client, api, redis_gone):
    pool, _token, _ws = setup
    agent = FakeAgent(client, _token, "warm-a")
    task = apply_pending(setup, agent)
    assert reservation(task) is not None  # the warm path: Confirm assigns the apply to warm-a and pushes it

    resp = api.post(f"/api/v1/runs/{task.id}/confirm/", {"comment": "go"}, format="json")
    assert resp.status_code == 200, resp.content

    task.refresh_from_db()
    job = Job.objects.get(task=task, kind="apply")
    assert task.status == "apply_queued"
    assert job.status == "queued" and job.agent is None, "the apply must not wait for the ack timeout"
    assert "the push to warm-a failed (Redis unreachable): the apply goes to the queue" in job.cold_reason
    assert reservation(task) is None

    # Any agent's claim takes it, cold, from the database (no Redis).
    taken = agent.claim()
    assert taken is not None and taken["id"] == job.id and taken["kind"] == "apply"
    assert "Redis unreachable" in taken["cold_reason"]
    assert taken["fence"] == 2  # a new fence: the push's copy (fence 1) would be refused


@pytest.mark.django_db(transaction=True)
def test_a_held_apply_is_handed_over_in_its_warmups_answer_without_redis(setup, client, settings, tmp_path):
    """The apply that waited for a warmup goes to that warmup's agent inside the answer to
    the warmup's result: no push, so an unreachable Redis costs it nothing (it is not sent
    to the queue, cold)."""
    from tasks_app.dispatch import agent_reports
    from tasks_app.services.runs import run_confirm

    _pool, token, _ws = setup
    a1 = FakeAgent(client, token, "a1")
    task = apply_pending(setup, a1)
    agent_reports.agent_set_offline(agent_id=a1.id, reason="test")
    a2 = FakeAgent(client, token, "a2")
    warmup = a2.claim()
    assert warmup["kind"] == "warmup"
    run_confirm(task_id=task.id, actor="test")  # the apply waits for a2's warmup

    settings.REDIS_URL = f"unix://{tmp_path}/no-redis-here.sock"
    wakeups.breaker.reset()
    try:
        answer = a2.finish(warmup, kept_dir=True)
        assert answer.status_code == 200
        [handed] = answer.json()["jobs"]
        job = Job.objects.get(task=task, kind="apply")
        assert handed["id"] == job.id and handed["fence"] == job.fence
        assert job.status == "running" and job.agent_id == a2.id and job.cold_reason == ""
    finally:
        wakeups.breaker.reset()


@pytest.mark.django_db(transaction=True)  # after-commit work (live-log and dispatch events) runs
def test_registration_heartbeats_logs_results_and_the_state_backend_need_no_redis(setup, client, redis_gone):
    import base64

    _pool, token, ws = setup
    agent = FakeAgent(client, token, "no-redis")  # registers
    run_create(workspace=ws, operation="plan", actor="test")
    job = agent.claim()  # from the database
    assert job is not None and job["kind"] == "plan"
    assert agent.post("/agent/v1/heartbeat", {"running_jobs": [job["id"]]}).status_code == 200
    resp = agent.post(f"/agent/v1/jobs/{job['id']}/logs", {"seq": 1, "text": "Initializing...\n"}, fence=job["fence"])
    assert resp.status_code in (200, 201), resp.content
    # Terraform's state read, with the job's credential (a plan reads; no state yet: 204).
    state = job["state_backend"]
    auth = "Basic " + base64.b64encode(f"{state['username']}:{state['password']}".encode()).decode()
    assert client.get(f"/api/v1/workspaces/{ws.id}/state", HTTP_AUTHORIZATION=auth).status_code == 204
    assert agent.plan(job, changes=False, keep=False) == {"keep_dir": False}
    assert Task.objects.get(id=job["task"]["id"]).log_size > 0


@pytest.mark.django_db(transaction=True)
def test_the_claim_longpoll_reads_the_database_when_redis_is_unreachable(setup, client, redis_gone):
    _pool, token, ws = setup
    agent = FakeAgent(client, token, "poller")
    agent_row = Agent.objects.get(id=agent.id)

    def queue_a_run() -> None:
        try:
            run_create(workspace=ws, operation="plan", actor="test")
        finally:
            connection.close()

    timer = threading.Timer(0.5, queue_a_run)
    start = time.monotonic()
    timer.start()
    jobs = asyncio.run(claim_longpoll(agent_row, 8.0)).jobs
    took = time.monotonic() - start
    timer.join()
    assert [j["kind"] for j in jobs] == ["plan"]
    assert took < 3.0, f"the database fallback took {took:.2f}s to find a queued job"


@pytest.mark.django_db(transaction=True)
def test_the_claim_longpoll_goes_back_to_wakeups_when_redis_returns(setup, client, settings, caplog):
    caplog.set_level(logging.WARNING, logger="iacplatform.wakeups")
    _pool, token, ws = setup
    agent = FakeAgent(client, token, "returning")
    agent_row = Agent.objects.get(id=agent.id)
    root = Path(tempfile.mkdtemp(prefix="iac-rd-"))  # short: a unix socket path has ~100 chars
    settings.REDIS_URL = f"unix://{root}/redis/redis.sock"
    wakeups.breaker.reset()
    started: list[Path] = []

    def redis_comes_back_then_a_run_is_queued() -> None:
        try:
            time.sleep(0.5)
            started.append(embedded.ensure_redis(root))
            wait_for(lambda: any("Redis answers again" in w for w in _warnings(caplog)), 6, "the poll to use Redis again")
            run_create(workspace=ws, operation="plan", actor="test")
        finally:
            connection.close()

    thread = threading.Thread(target=redis_comes_back_then_a_run_is_queued)
    try:
        thread.start()
        jobs = asyncio.run(claim_longpoll(agent_row, 9.0)).jobs
        thread.join()
        assert [j["kind"] for j in jobs] == ["plan"]
        warnings = _warnings(caplog)
        assert "Redis unreachable" in warnings[0] and "Redis answers again" in warnings[1], warnings
    finally:
        thread.join()
        if started:
            os.kill(int((root / "redis" / "redis.pid").read_text()), signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
        wakeups.breaker.reset()


@pytest.mark.django_db(transaction=True)
def test_a_poll_waiting_on_a_hung_redis_falls_back_once_the_process_sees_redis_fail(setup, client, settings):
    # A stopped (hung) server sends no error to a subscriber that waits: the poll learns of the
    # outage from the breaker, which the run's own wake-up opens when it times out.
    _pool, token, ws = setup
    agent = FakeAgent(client, token, "hung")
    agent_row = Agent.objects.get(id=agent.id)
    root = Path(tempfile.mkdtemp(prefix="iac-rh-"))
    sock = embedded.ensure_redis(root)
    pid = int((root / "redis" / "redis.pid").read_text())
    settings.REDIS_URL = f"unix://{sock}"
    wakeups.breaker.reset()

    def hang_redis_then_queue_a_run() -> None:
        try:
            time.sleep(0.5)  # the poll is subscribed and waiting
            os.kill(pid, signal.SIGSTOP)
            run_create(workspace=ws, operation="plan", actor="test")  # its wake-up times out
        finally:
            connection.close()

    thread = threading.Thread(target=hang_redis_then_queue_a_run)
    try:
        start = time.monotonic()
        thread.start()
        jobs = asyncio.run(claim_longpoll(agent_row, 9.0)).jobs
        took = time.monotonic() - start
        assert [j["kind"] for j in jobs] == ["plan"]
        assert took < 4.0, f"the poll waited {took:.2f}s on a hung Redis"
    finally:
        thread.join()
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)  # a stopped process dies once it runs again
        shutil.rmtree(root, ignore_errors=True)
        wakeups.breaker.reset()


# --- the web processes' fallback sweep -------------------------------------------------


def test_the_web_sweeps_only_while_celerys_sweep_is_stale():
    from tasks_app.sweep_fallback import fallback_due

    now = timezone.now()
    ago = lambda s: now - datetime.timedelta(seconds=s)  # noqa: E731
    due = lambda celery, web: fallback_due(now=now, celery_at=celery, web_at=web, interval=5, after=15)  # noqa: E731
    assert not due(ago(2), None)  # Celery sweeps: web does nothing
    assert not due(ago(14), ago(100))
    assert due(ago(16), None)  # stale: web takes over
    assert due(None, None)  # Celery never swept
    assert due(ago(60), ago(5))  # and keeps the normal rate
    assert not due(ago(60), ago(1))  # another web process swept a moment ago


def test_a_web_process_sweeps_when_the_celery_sweep_is_stale_and_stops_when_it_is_back(db, settings, caplog):
    from tasks_app.sweep_fallback import FallbackSweeper

    caplog.set_level(logging.WARNING, logger="tasks_app.sweep_fallback")
    settings.IAC_SWEEP_FALLBACK_AFTER_SECONDS = 3
    sweeper = FallbackSweeper()
    stale = timezone.now() - datetime.timedelta(seconds=30)
    SweepHeartbeat.objects.filter(id=SweepHeartbeat.CELERY).delete()
    assert sweeper.tick() is None  # no Celery sweep yet: the worker gets its grace from this process's start
    SweepHeartbeat.objects.update_or_create(id=SweepHeartbeat.CELERY, defaults={"finished_at": stale})
    SweepHeartbeat.objects.filter(id=SweepHeartbeat.WEB).delete()

    result = sweeper.tick()
    assert result is not None  # due: it tried to sweep
    messages = lambda: [r.getMessage() for r in caplog.records if r.name == "tasks_app.sweep_fallback"]  # noqa: E731
    if result.get("skipped"):
        # A session-wide e2e worker sweeping this database holds the advisory lock (its own
        # heartbeat waits for this test's row): the lock doing its job, and no takeover to
        # report. Run alone, the other branch is taken.
        assert not sweeper.active and messages() == []
    else:
        assert sweeper.active
        assert SweepHeartbeat.objects.get(id=SweepHeartbeat.WEB).finished_at > stale
        assert SweepHeartbeat.objects.get(id=SweepHeartbeat.CELERY).finished_at == stale
        assert len(messages()) == 1 and "runs the control loop" in messages()[0]

    SweepHeartbeat.objects.filter(id=SweepHeartbeat.CELERY).update(finished_at=timezone.now())
    assert sweeper.tick() is None and not sweeper.active
    if not result.get("skipped"):
        assert len(messages()) == 2 and "runs again" in messages()[1], messages()


def test_health_says_the_control_loop_runs_in_web_while_celerys_sweep_is_stale(settings):
    from iacplatform.health import sweep_problem

    settings.IAC_SWEEP_FALLBACK_AFTER_SECONDS = 3
    now = timezone.now()
    problem = sweep_problem(now - datetime.timedelta(seconds=20), now, now - datetime.timedelta(seconds=1))
    assert "the control loop runs in the web processes" in problem and "Celery" in problem
    assert sweep_problem(now - datetime.timedelta(seconds=1), now, now - datetime.timedelta(seconds=1)) == ""
    assert "no Celery sweep has completed yet" in sweep_problem(None, now, now)
