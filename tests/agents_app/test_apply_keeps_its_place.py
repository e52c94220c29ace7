"""A confirmed apply its warm agent could not take goes back to the queue and keeps its
place there: ahead of the plans queued after its run's plan, ahead of plans another agent's
warm plan dir would prefer, and ahead of warmups. The next free slot takes it, and the run
says why it went cold. (Fake agents over the agent endpoints, no terraform.)"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tasks_app.dispatch.models import Job
from tasks_app.models import Task
from tasks_app.services import sweep
from tasks_app.services.runs import run_confirm, run_create
from tests.agents_app.fakes import FakeAgent, apply_pending
from tests.factories import DEMO_MAIN_TF, make_workspace

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_requeued_apply_is_taken_before_the_plans_queued_after_its_run(setup, client, settings):
    pool, token, ws = setup
    warm, other = FakeAgent(client, token, "warm"), FakeAgent(client, token, "other", slots=1)
    task = apply_pending(setup, warm)  # warm holds the plan's dir, reserved for its apply

    # Plans queued after this run's plan: one of a workspace `other` holds warm (plan affinity
    # would give it to `other` first), one of a fresh workspace.
    held = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    fresh = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    resp = other.post("/agent/v1/heartbeat", {"warm_plan_workspaces": [held.id]})
    assert resp.status_code == 200, resp.content
    run_create(workspace=held, operation="plan", actor="test")
    run_create(workspace=fresh, operation="plan", actor="test")
    sweep.sweep()  # run_create's start is an after-commit callback

    run_confirm(task_id=task.id, actor="test")  # pushed to `warm`, which never takes it
    apply = Job.objects.get(task=task, kind="apply")
    assert apply.agent_id == warm.id
    Job.objects.filter(id=apply.id).update(claimed_at=timezone.now() - timedelta(seconds=10))
    assert apply.id in sweep.step_leases()  # taken back from Redis: `warm` never got it

    taken = other.claim()  # the next free slot
    assert taken["id"] == apply.id and taken["kind"] == "apply", "the apply lost its place to a plan"
    assert taken["fence"] == 2
    why = f"warm did not take the apply within {settings.IAC_TARGET_CLAIM_TIMEOUT_SECONDS:g}s"
    assert why in taken["cold_reason"]
    task.refresh_from_db()
    assert task.warmup_status != "ready"
    assert f"{why}; the apply goes cold" in Task.objects.get(id=task.id).warmup_message


def test_applies_go_in_the_order_their_runs_plans_were_queued(setup, client):
    pool, token, ws = setup
    a = FakeAgent(client, token, "a")
    second_ws = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    first = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    second = run_create(workspace=second_ws, operation="plan_and_apply", actor="test")
    sweep.sweep()
    plans = [a.claim(), a.claim()]
    assert [p["task"]["id"] for p in plans] == [first.id, second.id]
    for plan in plans:
        a.plan(plan, keep=False)  # no warm dir: the applies are queued, cold
    run_confirm(task_id=second.id, actor="test")  # confirmed first...
    run_confirm(task_id=first.id, actor="test")
    b = FakeAgent(client, token, "b", slots=1)
    assert b.claim()["task"]["id"] == first.id  # ...but the first run's plan was queued first


def auto_apply_planned(setup, client) -> tuple[FakeAgent, Task, dict, dict]:
    """An auto-apply workspace's run planned by a1: (a1, the run, the plan job, the answer)."""
    pool, token, ws = setup
    ws.auto_apply = True
    ws.save(update_fields=["auto_apply"])
    a1 = FakeAgent(client, token, "a1")
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()
    plan = a1.claim()
    return a1, task, plan, a1.plan(plan)


def test_an_auto_apply_goes_to_its_plans_agent_in_the_answer_to_the_plans_result(setup, client):
    """Auto-apply: the apply is confirmed with the plan's result and handed to the plan's
    agent in that request's answer (FinishReply.jobs), on the slot the plan kept; it is not
    pushed too, so nothing can hand it out twice."""
    a1, task, plan, answer = auto_apply_planned(setup, client)
    assert answer["keep_dir"] is True
    [handed] = answer["jobs"]
    apply = Job.objects.get(task=task, kind="apply")
    assert handed["id"] == apply.id and handed["kind"] == "apply" and handed["fence"] == 1
    assert apply.agent_id == a1.id and apply.slot_index == Job.objects.get(id=plan["id"]).slot_index
    assert a1.claim() is None, "handed in the answer and pushed as well"


def test_an_apply_whose_handing_answer_was_lost_goes_back_to_the_queue(setup, client):
    """The agent never got the answer that carried its apply (the request failed after the
    commit): it never reports the apply, so two heartbeats later the apply goes back to the
    queue, cold, for any agent; the credential handed out in the lost answer is revoked."""
    a1, task, _, _ = auto_apply_planned(setup, client)  # the answer, with the apply, is "lost"
    apply = Job.objects.get(task=task, kind="apply")
    Job.objects.filter(id=apply.id).update(claimed_at=timezone.now() - timedelta(seconds=30))
    for _ in range(2):
        assert a1.post("/agent/v1/heartbeat", {"running_jobs": []}).status_code == 200
    apply.refresh_from_db()
    assert apply.status == "queued" and apply.agent_id is None and apply.credential_hash == ""
    a2 = FakeAgent(client, setup[1], "a2")
    again = a2.claim()
    assert again["id"] == apply.id and again["fence"] == 2 and "the apply had not started" in again["cold_reason"]
