"""Freeze windows on the real services and database: nothing is dispatched while a
pool is frozen, queued runs say until when, Confirm is refused with the window's end, and
entering a window stops plans and warmups but lets applies finish. Agents are registered
rows that claim and report the way the agent API does (no HTTP, no terraform), as in
test_bounds.py; one sweep does what after-commit callbacks would (they never run here)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents_app.models import FreezeKind, FreezeWindow
from agents_app.services.freeze import moment_text, pool_frozen_until
from agents_app.services.freeze_windows import freeze_window_lift
from iacplatform.errors import Conflict
from tasks_app.dispatch.models import Job, Slot
from tasks_app.models import Task
from tasks_app.services import sweep
from tasks_app.services.runs import run_confirm, run_create
from tasks_app.states import RunStatus
from tests.agents_app.test_bounds import ack, ago, claim, finish, heartbeat, plan, reason, status
from tests.factories import DEMO_MAIN_TF, make_agent, make_workspace

pytestmark = pytest.mark.django_db


def freeze(pool, *, minutes: float = 60, name: str = "maintenance") -> FreezeWindow:
    """A one-off window that started a minute ago."""
    now = timezone.now()
    return FreezeWindow.objects.create(pool=pool, name=name, kind=FreezeKind.ONE_OFF,
                                       starts_at=now - timedelta(minutes=1), ends_at=now + timedelta(minutes=minutes))


def until(window: FreezeWindow) -> str:
    return moment_text(window.ends_at)


@pytest.fixture
def pool(setup):
    return setup[0]


@pytest.fixture
def ws(setup):
    return setup[2]


@pytest.fixture
def agent(pool):
    return make_agent(pool=pool, name="a1")[0]


def another_workspace(pool):
    return make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})


def apply_pending(ws, agent, *, keep: bool = True) -> Task:
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()
    assert plan(agent, claim(agent), keep=keep) is keep
    assert status(task) == RunStatus.APPLY_PENDING
    return task


def test_a_frozen_pool_dispatches_nothing_and_its_queued_runs_say_until_when(ws, pool, agent):
    window = freeze(pool)
    assert pool_frozen_until(pool) == window.ends_at
    task = run_create(workspace=ws, operation="plan", actor="test")
    sweep.sweep()
    assert status(task) == RunStatus.PLAN_QUEUED, "the queue rule still starts it: it waits for the window"
    assert claim(agent) is None
    assert reason(task) == f"queued: frozen until {until(window)} (maintenance)"

    freeze_window_lift(window_id=window.id, actor="test", reason="emergency fix")
    assert pool_frozen_until(pool) is None
    assert claim(agent)["kind"] == "plan"


def test_confirm_is_refused_with_a_409_naming_the_windows_end_and_nothing_changes(ws, pool, agent):
    task = apply_pending(ws, agent)
    window = freeze(pool)
    with pytest.raises(Conflict) as refused:
        run_confirm(task_id=task.id, actor="test")
    assert str(refused.value) == (f"pool '{pool.name}' is frozen until {until(window)} (maintenance): Confirm Apply "
                                  f"is refused until the window ends (or a site admin lifts it)")
    assert status(task) == RunStatus.APPLY_PENDING
    assert not Job.objects.filter(task=task, kind="apply").exists()
    assert reason(task).endswith(f"; Confirm is refused while the pool is frozen until {until(window)} (maintenance)")


def test_entering_a_window_releases_reservations_stops_plans_and_warmups_and_lets_applies_finish(pool, agent):
    reserved = apply_pending(another_workspace(pool), agent)
    warming = apply_pending(another_workspace(pool), agent, keep=False)
    sweep.sweep()  # queues warmups (an after-commit callback here)
    applying_ws = another_workspace(pool)
    applying = apply_pending(applying_ws, agent)
    run_confirm(task_id=applying.id, actor="test")
    apply = Job.objects.get(task=applying, kind="apply")
    apply_job = {"id": apply.id, "fence": apply.fence}
    ack(agent, apply_job)
    warmup = claim(agent)
    assert warmup["kind"] == "warmup" and warmup["task"]["id"] == warming.id
    assert Slot.objects.filter(agent=agent, state="idle").count() == 0, "a1: a reservation, the apply, the warmup"
    a2 = make_agent(pool=pool, name="a2")[0]
    planning = run_create(workspace=another_workspace(pool), operation="plan", actor="test")
    sweep.sweep()
    plan_job = claim(a2)
    assert plan_job["kind"] == "plan"

    window = freeze(pool)
    entered = f"the pool entered freeze window 'maintenance' until {until(window)}"
    done = sweep.sweep()["freeze"][pool.id]
    assert done["released"] == [reserved.id]
    assert sorted(done["stopped"]) == sorted([warmup["id"], plan_job["id"]])
    reserved.refresh_from_db()
    assert reserved.warmup_status == "none" and reserved.warmup_message == f"released: {entered}; warmed up after it"
    assert not Slot.objects.filter(state="reserved").exists()
    planning.refresh_from_db()
    assert (planning.status, planning.message) == (RunStatus.PLANNING, f"cancelled: {entered}"), "said at once"
    orders = heartbeat(agent, apply_job, warmup).cancel
    assert [o.id for o in orders] == [warmup["id"]], "the apply is never interrupted"
    assert [o.id for o in heartbeat(a2, plan_job).cancel] == [plan_job["id"]]
    assert sweep.sweep()["freeze"] == {}, "idempotent: nothing left to undo"

    finish(a2, plan_job, "cancelled", error="cancelled while terraform was running")
    planning.refresh_from_db()
    assert (planning.status, planning.message) == (RunStatus.CANCELLED, f"cancelled: {entered}")
    finish(agent, warmup, "cancelled", error="cancelled while terraform was running")
    warming.refresh_from_db()
    assert (warming.warmup_status, warming.warmup_retry_count) == ("none", 0), "no retry counted"
    finish(agent, apply_job)
    assert status(applying) == RunStatus.APPLIED

    sweep.sweep()
    assert not Job.objects.filter(kind="warmup", status="queued").exists(), "no warmup while frozen"
    assert claim(agent) is None

    # Leaving: the runs are warmed up again and work is dispatched.
    freeze_window_lift(window_id=window.id, actor="test", reason="done early")
    sweep.sweep()
    assert set(Job.objects.filter(kind="warmup", status="queued").values_list("task_id", flat=True)) == {
        reserved.id, warming.id}
    assert claim(agent)["kind"] == "warmup"


def test_a_plan_that_finishes_as_the_pool_freezes_keeps_no_warm_dir(ws, pool, agent):
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()
    job = claim(agent)
    freeze(pool)
    assert plan(agent, job) is False
    assert status(task) == RunStatus.APPLY_PENDING
    assert not Slot.objects.filter(task=task, state="reserved").exists()


def test_a_warmup_that_succeeds_during_a_freeze_reserves_nothing_and_counts_no_retry(ws, pool, agent):
    task = apply_pending(ws, agent, keep=False)
    sweep.sweep()
    warmup = claim(agent)
    freeze(pool)
    assert finish(agent, warmup, kept_dir=True).keep_dir is False
    task.refresh_from_db()
    assert (task.warmup_status, task.warmup_retry_count) == ("none", 0)
    assert task.warmup_message.startswith("the pool is frozen until ")


def test_an_auto_apply_run_waits_for_the_window_to_end(ws, pool, agent):
    ws.auto_apply = True
    ws.save()
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()
    job = claim(agent)
    window = freeze(pool)
    plan(agent, job)
    sweep.sweep()
    assert status(task) == RunStatus.APPLY_PENDING
    freeze_window_lift(window_id=window.id, actor="test", reason="ok")
    sweep.sweep()
    assert status(task) == RunStatus.APPLY_QUEUED


def test_the_no_agent_bound_is_suspended_while_frozen_and_counts_from_the_freezes_end(ws, pool):
    task = run_create(workspace=ws, operation="plan", actor="test")
    sweep.sweep()
    Job.objects.filter(task=task).update(created_at=ago(4000))
    window = freeze(pool, minutes=10)
    FreezeWindow.objects.filter(id=window.id).update(starts_at=ago(3900))
    sweep.sweep()
    assert status(task) == RunStatus.PLAN_QUEUED
    assert reason(task).startswith("queued: frozen until ")

    freeze_window_lift(window_id=window.id, actor="test", reason="over")
    sweep.sweep()
    assert status(task) == RunStatus.PLAN_QUEUED, "pods need time to come back after a freeze"
    assert reason(task).startswith(f"queued: no agent of pool '{pool.name}' is online (gives up at ")


def test_lifting_needs_a_reason_and_an_active_window(pool):
    from iacplatform.errors import Invalid

    window = freeze(pool)
    with pytest.raises(Invalid):
        freeze_window_lift(window_id=window.id, actor="test", reason=" ")
    later = FreezeWindow.objects.create(pool=pool, name="later", kind=FreezeKind.ONE_OFF,
                                        starts_at=timezone.now() + timedelta(hours=1),
                                        ends_at=timezone.now() + timedelta(hours=2))
    with pytest.raises(Conflict, match="'later' is not active now"):
        freeze_window_lift(window_id=later.id, actor="test", reason="why not")


def test_an_apply_confirmed_during_a_warmup_is_not_handed_over_while_frozen_and_goes_after_the_window(ws, pool, agent):
    task = apply_pending(ws, agent, keep=False)
    sweep.sweep()
    warmup = claim(agent)
    run_confirm(task_id=task.id, actor="test")  # waits for the warmup (held)
    window = freeze(pool)
    sweep.sweep()
    assert [o.id for o in heartbeat(agent, warmup).cancel] == [warmup["id"]]
    assert finish(agent, warmup, kept_dir=True).keep_dir is False, "it finished before the order: nothing kept"
    apply = Job.objects.get(task=task, kind="apply")
    assert (apply.status, apply.hold_until) == ("queued", None), "not handed over, not pushed"
    assert reason(task) == f"queued: frozen until {until(window)} (maintenance)"
    assert claim(agent) is None

    freeze_window_lift(window_id=window.id, actor="test", reason="go")
    taken = claim(agent)
    assert (taken["id"], taken["kind"]) == (apply.id, "apply")


def test_pool_frozen_until_takes_the_pool_or_its_id_and_an_injected_clock(pool):
    from datetime import UTC, datetime, time

    FreezeWindow.objects.create(pool=pool, name="nights", kind=FreezeKind.WEEKLY, weekdays=["sat"],
                                start_time=time(22), end_time=time(6), time_zone="Europe/Berlin")
    # The spring-forward night in Berlin: 22:00 CET (21:00 UTC) to 06:00 CEST (04:00 UTC).
    assert pool_frozen_until(pool, datetime(2026, 3, 28, 21, 0, tzinfo=UTC)) == datetime(2026, 3, 29, 4, 0, tzinfo=UTC)
    assert pool_frozen_until(pool.id, now=datetime(2026, 3, 28, 20, 59, tzinfo=UTC)) is None
