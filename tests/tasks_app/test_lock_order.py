"""One lock order for the dispatch core.

A claim locks the job it takes, then its run. Cancel, Discard, Confirm and the apply_pending
expiry start from the run, and lock in the same order: had they locked the run and then its
queued jobs, a Cancel that came while an agent claimed that run's job would deadlock, which
PostgreSQL breaks by failing one side (the person sees a 500). Each pair is lined up the worst way on purpose: a
third connection holds the run's row, the run-first service queues behind it, then the claim
takes the job and queues behind it too; the holder lets go. Repeated, and nothing may fail.

And a Cancel accepted while planning wins over a plan result that arrives after it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app.dispatch.models import Job
from tasks_app.models import Task
from tasks_app.services.runs import run_create, run_expire_pending
from tests.agents_app.fakes import FakeAgent
from tests.factories import DEMO_MAIN_TF, make_token, make_workspace

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDS = 4


def _waiting_on_locks() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def _until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Worker(threading.Thread):
    """Runs `fn` on its own database connection and keeps what it returned or raised."""

    def __init__(self, fn: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            self.error = exc
        finally:
            connections.close_all()


def _lined_up(task_id: int, run_first: Callable[[], object], claim: Callable[[], object]) -> tuple[Worker, Worker]:
    """Hold the run's row, queue `run_first` behind it, then `claim`; let go; both finish."""
    release = threading.Event()
    held = threading.Event()

    def hold() -> None:
        with transaction.atomic():
            Task.objects.select_for_update(no_key=True).get(id=task_id)
            held.set()
            release.wait(20)

    holder = Worker(hold)
    holder.start()
    assert held.wait(10)
    before = _waiting_on_locks()
    first = Worker(run_first)
    first.start()
    _until(lambda: _waiting_on_locks() > before, "the run-first service to wait for the run's row")
    second = Worker(claim)
    second.start()
    # With one lock order the claim does not wait: the run-first service holds the run's jobs
    # and the claim skips them. Before, it took the job and queued behind the run's row.
    _until(lambda: not second.is_alive() or _waiting_on_locks() > before + 1, "the claim to wait or finish")
    release.set()
    for worker in (holder, first, second):
        worker.join(30)
        assert not worker.is_alive()
    assert holder.error is None
    return first, second


def _api(user) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {make_token(user)}")
    return api


def _ok(resp, *codes: int) -> None:
    assert resp.status_code in codes, (resp.status_code, resp.content[:500])


def _apply_pending_with_a_queued_warmup(ws, agent: FakeAgent) -> Task:
    """A run waiting for Confirm whose plan dir was not kept: a warmup job is queued for it."""
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    plan = agent.claim()
    agent.plan(plan, keep=False)
    task.refresh_from_db()
    assert task.status == "apply_pending"
    assert Job.objects.filter(task=task, kind="warmup", status="queued").exists()
    return task


def test_a_cancel_while_an_agent_claims_the_runs_plan_neither_deadlocks_nor_fails(setup, alice):
    pool, token, _ = setup
    agent = FakeAgent(Client(), token, "a1")
    for _ in range(ROUNDS):
        task = run_create(workspace=make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF}),
                          operation="plan", actor="test")
        api = _api(alice)
        cancel, claim = _lined_up(
            task.id,
            lambda api=api, task=task: api.post(f"/api/v1/runs/{task.id}/cancel/", {}, format="json"),
            lambda: _claim_as(agent),
        )
        assert cancel.error is None and claim.error is None, (cancel.error, claim.error)
        _ok(cancel.result, 200)
        task.refresh_from_db()
        job = Job.objects.get(task=task, kind="plan")
        # Whoever came first, the Cancel holds: nothing of the run is left running for nothing.
        assert task.status in ("cancelled", "planning"), task.status
        if task.status == "planning":
            assert job.status == "running" and job.cancel_requested
            agent.finish(claim.result, outcome="cancelled")
        else:
            assert job.status == "cancelled"


def _claim_as(agent: FakeAgent):
    """The agent's claim from this thread (its own test client and database connection)."""
    twin = FakeAgent.__new__(FakeAgent)
    twin.__dict__.update(agent.__dict__, c=Client())
    return twin.claim()


@pytest.mark.parametrize("service", ["discard", "confirm", "expire"])
def test_discard_confirm_and_the_expiry_while_an_agent_claims_the_runs_warmup(setup, alice, service):
    pool, token, _ = setup
    pool.apply_pending_timeout_seconds = 3600
    pool.save(update_fields=["apply_pending_timeout_seconds"])
    planner = FakeAgent(Client(), token, "planner", slots=1)
    warmer = FakeAgent(Client(), token, "warmer")
    for _ in range(ROUNDS):
        ws = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
        task = _apply_pending_with_a_queued_warmup(ws, planner)
        api = _api(alice)
        run_first = {
            "discard": lambda api=api, task=task: api.post(f"/api/v1/runs/{task.id}/discard/", {}, format="json"),
            "confirm": lambda api=api, task=task: api.post(f"/api/v1/runs/{task.id}/confirm/", {}, format="json"),
            "expire": lambda task=task: run_expire_pending(task_id=task.id, now=timezone.now() + timedelta(hours=2)),
        }[service]
        first, claim = _lined_up(task.id, run_first, lambda: _claim_as(warmer))
        assert first.error is None and claim.error is None, (first.error, claim.error)
        if service != "expire":
            _ok(first.result, 200, 201, 202)
        else:
            assert first.result is True
        task.refresh_from_db()
        assert task.status == {"discard": "discarded", "confirm": "apply_queued", "expire": "discarded"}[service]
        # Clean up what the round left: a cold apply queued by Confirm, the warmer's slots.
        if service == "confirm":
            _ok(api.post(f"/api/v1/runs/{task.id}/cancel/", {}, format="json"), 200)
        for job in Job.objects.filter(agent_id=warmer.id, status="running"):
            payload = {"id": job.id, "fence": job.fence}
            warmer.finish(payload, outcome="cancelled" if job.kind == "warmup" else "failed", error="test over")


def test_a_cancel_accepted_while_planning_wins_over_a_plan_that_succeeds_after_it(setup, alice):
    """An auto-apply workspace: before, the plan's result confirmed the run and it applied
    after the person pressed Cancel."""
    pool, token, ws = setup
    ws.auto_apply = True
    ws.save(update_fields=["auto_apply"])
    agent = FakeAgent(Client(), token, "a1")
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    plan = agent.claim()
    _ok(_api(alice).post(f"/api/v1/runs/{task.id}/cancel/", {}, format="json"), 200)
    task.refresh_from_db()
    assert task.status == "planning", "terraform still runs; it gets SIGINT"

    # terraform finished before the SIGINT reached it: the plan and a succeeded result arrive.
    answer = agent.plan(plan)
    task.refresh_from_db()
    assert task.status == "cancelled"
    assert "cancelled while planning" in task.message and "nothing is applied" in task.message
    assert not Job.objects.filter(task=task, kind="apply").exists()
    assert not answer.get("jobs"), "no apply handed to the agent in the plan's answer"
    assert agent.claim() is None, "and none queued"
