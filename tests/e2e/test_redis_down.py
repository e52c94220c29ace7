"""Redis is an accelerator, end to end: a platform of the test's own (Daphne, a Celery worker
with beat, a redis-server on a unix socket) on the test database, real agents and terraform.
Redis is SIGKILLed, and so is the worker (Redis is its broker anyway): Confirm still answers
200 and runs keep being planned and applied while Redis stays dead.

The suite's shared Redis (settings.REDIS_URL) is never touched: other tests and the
session-wide platform of `live_url` use it."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
from django.utils import timezone

from agents_app.models import Agent
from iacplatform import embedded
from tasks_app.dispatch.models import Job
from tasks_app.models import SweepHeartbeat
from tests.e2e.apiclient import PlatformUser
from tests.factories import make_token
from tests.live import LOG_DIR, AgentStarter, Scenario, _stop, start_platform, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TAG = "-redis-down"


@pytest.fixture
def own_redis():
    # Not tmp_path: a unix socket path must stay under ~100 characters.
    root = Path(tempfile.mkdtemp(prefix="iac-e2e-redis-"))
    sock = embedded.ensure_redis(root)
    pid = int((root / "redis" / "redis.pid").read_text())
    try:
        yield sock, pid
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(root, ignore_errors=True)


def _redis_dead(sock: Path, pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return not embedded._redis_alive(sock)
    return False


def test_confirm_with_redis_killed_answers_200_and_runs_apply_while_redis_is_down(own_redis, alice, tmp_path):
    sock, redis_pid = own_redis
    platform = start_platform(redis_url=f"unix://{sock}", tag=TAG)
    starter = AgentStarter(platform.base, tmp_path)
    try:
        s = Scenario(PlatformUser(platform.base, make_token(alice)), starter, tmp_path, warm_apply=True)
        a1 = s.agent("a1")
        first = s.user.queue(s.workspace["id"])
        s.user.wait(first["id"], "apply_pending", warmup="ready")

        os.kill(redis_pid, signal.SIGKILL)
        wait_for(lambda: _redis_dead(sock, redis_pid), 10, "redis to die")
        _stop(platform.worker, signal.SIGKILL)  # no Celery sweep from this platform any more
        killed_at = timezone.now()

        started = time.monotonic()
        resp = s.user.confirm(first["id"])
        took = time.monotonic() - started
        assert resp.status_code == 200, resp.text
        assert took < 3, f"Confirm without Redis took {took:.2f}s"
        done = s.user.wait(first["id"], "applied", timeout=90)
        assert _redis_dead(sock, redis_pid), "the run must apply while Redis is still down"
        apply = Job.objects.get(task_id=first["id"], kind="apply")
        assert f"the push to {a1.name} failed (Redis unreachable): the apply goes to the queue" in apply.cold_reason
        # (Taken again from the queue by a1, which still has the plan's dir, it may even run
        # there: the agent decides from what is on its disk.)
        assert done["apply_path"] in ("fast", "cold")
        assert s.applies() == 1

        # A second run (a change to apply) is planned, kept warm and applied with Redis still down.
        s.user.request("POST", f"/api/v1/workspaces/{s.workspace['id']}/variables/",
                       json={"key": "greeting", "value": "again", "category": "terraform"}, expect=201)
        second = s.user.queue(s.workspace["id"])
        s.user.wait(second["id"], "apply_pending", warmup="ready", timeout=90)
        resp = s.user.confirm(second["id"])
        assert resp.status_code == 200, resp.text
        s.user.wait(second["id"], "applied", timeout=90)
        assert _redis_dead(sock, redis_pid)
        assert s.applies() == 1  # the first run's create (an in-place update runs no provisioner)
        assert 'greeting = "again"' in s.user.log(second["id"])

        # The control loop kept running: a1, SIGKILLed now, is declared offline, which only
        # the sweep does. This platform's web process sweeps in place of its killed worker,
        # unless another Celery worker sweeps this same test database (the session-wide one
        # of `live_url`, when an earlier test started it).
        a1.kill()
        wait_for(lambda: Agent.objects.get(name=a1.name).status == "offline", 30, "the sweep to see a1 is gone")
        celery_at = SweepHeartbeat.objects.filter(id=SweepHeartbeat.CELERY).values_list("finished_at", flat=True).first()
        if celery_at is None or celery_at <= killed_at:
            web_at = SweepHeartbeat.objects.get(id=SweepHeartbeat.WEB).finished_at
            assert web_at > killed_at
            assert "this web process runs the control loop" in (LOG_DIR / f"daphne{TAG}.log").read_text()
        assert _redis_dead(sock, redis_pid)
    finally:
        starter.stop_all()
        platform.stop()
