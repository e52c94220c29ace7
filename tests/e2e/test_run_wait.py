"""Waiting without polling loops: `GET /runs/<id>/?wait=&until=` and `GET /runs/<id>/logs/?wait=`
against the real platform (Daphne, Celery, a real agent and terraform)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
import requests
from django.db import connection

from tasks_app.models import TaskEvent

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _timed(user, path: str, **kw) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = user.request("GET", path, timeout=90, **kw)
    return response, time.monotonic() - started


def test_wait_answers_as_soon_as_the_status_is_reached_not_at_the_bound(scenario):
    s = scenario()
    s.agent("a1")
    run = s.user.queue(s.workspace["id"], "plan")
    response = s.user.request("GET", f"/api/v1/runs/{run['id']}/?wait=60&until=planned&until=errored", timeout=90)
    answered = datetime.now(UTC)
    assert response.status_code == 200
    assert response.json()["status"] == "planned"
    reached = TaskEvent.objects.get(task_id=run["id"], to_status="planned").created_at
    # Woken by the status event (Redis pub/sub), not by a polling interval nor the bound.
    assert (answered - reached).total_seconds() < 0.5


def test_wait_answers_at_the_bound_with_the_run_as_it_is(scenario):
    s = scenario()
    s.user.request("PATCH", f"/api/v1/workspaces/{s.workspace['id']}/", json={"locked": True}, expect=200)
    run = s.user.queue(s.workspace["id"])  # pending behind the lock: it will not move
    response, took = _timed(s.user, f"/api/v1/runs/{run['id']}/?wait=2&until=applied")
    assert response.status_code == 200 and response.json()["status"] == "pending"
    assert 2 <= took < 3.5


def test_wait_without_until_answers_at_the_next_status_change(scenario):
    s = scenario()
    s.user.request("PATCH", f"/api/v1/workspaces/{s.workspace['id']}/", json={"locked": True}, expect=200)
    run = s.user.queue(s.workspace["id"])
    result: dict = {}
    waiter = threading.Thread(target=lambda: result.update(r=_timed(s.user, f"/api/v1/runs/{run['id']}/?wait=30")))
    waiter.start()
    time.sleep(1)
    s.user.request("POST", f"/api/v1/runs/{run['id']}/cancel/", json={}, expect=200)
    waiter.join(40)
    response, took = result["r"]
    assert response.json()["status"] == "cancelled"
    assert took < 3


def test_the_log_follows(scenario):
    s = scenario()
    s.agent("a1")
    run = s.user.queue(s.workspace["id"], "plan")
    offset, text, complete = 0, "", False
    deadline = time.monotonic() + 60
    calls = 0
    while not complete and time.monotonic() < deadline:
        page = s.user.request("GET", f"/api/v1/runs/{run['id']}/logs/?offset={offset}&wait=30", timeout=60).json()
        calls += 1
        assert page["text"] or page["complete"], "a follow answers with new log or at the end, not empty early"
        text, offset, complete = text + page["text"], page["next_offset"], page["complete"]
    assert complete and "Plan: 1 to add" in text
    assert calls < 40  # woken by appends, not spinning


def _connections_of(dbname: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [dbname])
        return cursor.fetchone()[0]


def test_many_waiters_hold_no_connection_and_do_not_starve_other_requests(scenario):
    s = scenario()
    s.user.request("PATCH", f"/api/v1/workspaces/{s.workspace['id']}/", json={"locked": True}, expect=200)
    run = s.user.queue(s.workspace["id"])
    dbname = connection.settings_dict["NAME"]
    before = _connections_of(dbname)
    answers: list[tuple[int, float]] = []

    def wait() -> None:
        # Each waiter its own HTTP connection, as separate pipelines would have.
        started = time.monotonic()
        response = requests.get(f"{s.user.base}/api/v1/runs/{run['id']}/?wait=6&until=applied",
                                headers=dict(s.user.s.headers), timeout=30)
        answers.append((response.status_code, time.monotonic() - started))

    waiters = [threading.Thread(target=wait) for _ in range(50)]
    for t in waiters:
        t.start()
    time.sleep(2)  # all are waiting now
    # 50 waiters holding a connection each would exhaust the web process's database pool (20):
    # the next request would then wait for one (up to the pool's 10 s timeout), not answer at once.
    assert _connections_of(dbname) <= before + 20
    response, took = _timed(s.user, "/api/v1/workspaces/")
    assert response.status_code == 200 and took < 1.0
    response, took = _timed(s.user, f"/api/v1/runs/{run['id']}/")
    assert response.status_code == 200 and took < 1.0
    for t in waiters:
        t.join(30)
    assert len(answers) == 50 and all(code == 200 for code, _ in answers)
    assert all(5.5 < took < 12 for _, took in answers), sorted(took for _, took in answers)


def test_without_redis_a_wait_still_answers_within_about_a_second_of_the_status(alice, tmp_path):
    from tests.e2e.apiclient import PlatformUser
    from tests.factories import make_pool, make_token
    from tests.live import start_platform

    # No Redis at all: nothing listens on this socket (the worker cannot reach its broker either).
    platform = start_platform(redis_url=f"unix://{tmp_path}/no-redis.sock", tag="-wait-no-redis")
    try:
        user = PlatformUser(platform.base, make_token(alice))
        pool, _ = make_pool()
        ws = user.create_workspace("no-redis", pool.id, {"main.tf": 'resource "terraform_data" "x" {}'})
        user.request("PATCH", f"/api/v1/workspaces/{ws['id']}/", json={"locked": True}, expect=200)
        run = user.queue(ws["id"])
        result: dict = {}
        waiter = threading.Thread(target=lambda: result.update(
            r=_timed(user, f"/api/v1/runs/{run['id']}/?wait=20&until=cancelled")))
        waiter.start()
        time.sleep(1)
        cancelled_at = time.monotonic()
        user.request("POST", f"/api/v1/runs/{run['id']}/cancel/", json={}, expect=200)
        waiter.join(30)
        response, took = result["r"]
        assert response.status_code == 200 and response.json()["status"] == "cancelled"
        assert took < 20 and time.monotonic() - cancelled_at < 2.5  # the database check, about once a second
    finally:
        platform.stop()
