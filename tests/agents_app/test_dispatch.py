"""The dispatch core through the agent HTTP endpoints (Django test client, fake agents, no
terraform): restarts, full pools, waiting reasons, terraform versions, Confirm during a
warmup, pushes keyed by job, the protocol version, the sweep's independent steps."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents_app.models import Agent
from agents_app.protocol import PROTOCOL_VERSION
from tasks_app.dispatch import agent_reports
from tasks_app.dispatch.models import DispatchEvent, Job, Slot
from tasks_app.models import Task
from tasks_app.serializers import RunSerializer
from tasks_app.services import sweep
from tasks_app.services.runs import run_confirm, run_create
from tests.agents_app.fakes import FakeAgent, apply_pending, reservation
from tests.factories import DEMO_MAIN_TF, make_workspace

pytestmark = pytest.mark.django_db(transaction=True)


def waiting_reason(task: Task) -> str:
    task.refresh_from_db()
    return RunSerializer(task).data["waiting_reason"]


# --- protocol --------------------------------------------------------------------------------


def test_it_refuses_an_agent_that_speaks_another_protocol_version(setup, client):
    _, token, _ = setup
    resp = client.post("/agent/v1/register", {"name": "old", "protocol_version": 1}, content_type="application/json",
                       HTTP_AUTHORIZATION=f"Bearer {token}")
    assert resp.status_code == 400
    assert f"protocol version 1; the server needs version {PROTOCOL_VERSION}" in resp.json()["detail"]
    assert not Agent.objects.filter(name="old").exists()


def test_it_names_the_field_of_a_bad_job_result(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    run_create(workspace=setup[2], operation="plan", actor="test")
    job = a1.claim()
    resp = a1.post(f"/agent/v1/jobs/{job['id']}/finish", {"outcome": "ok", "cancelled": True}, fence=job["fence"])
    assert resp.status_code == 400 and "field 'outcome'" in resp.json()["detail"]
    assert Job.objects.get(id=job["id"]).status == "running", "a refused result changes nothing"


def test_it_answers_a_bug_with_a_500_not_a_client_error(setup, client, monkeypatch):
    a1 = FakeAgent(client, setup[1], "a1")
    run_create(workspace=setup[2], operation="plan", actor="test")
    job = a1.claim()

    def broken(**kwargs):
        raise ValueError("a bug in the server")

    monkeypatch.setattr(agent_reports, "job_log_by_token", broken)
    client.raise_request_exception = False
    resp = a1.post(f"/agent/v1/jobs/{job['id']}/logs", {"seq": 1, "text": "x"}, fence=job["fence"])
    assert resp.status_code == 500


def test_it_fills_an_agents_free_slots_in_one_claim(setup, client):
    pool, token, _ = setup
    runs = [run_create(workspace=make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF}), operation="plan",
                       actor="test") for _ in range(4)]
    a1 = FakeAgent(client, token, "a1", slots=3)
    jobs = a1.claim_many(3)
    assert sorted(j["task"]["id"] for j in jobs) == [r.id for r in runs[:3]], "oldest first, one per slot"
    assert a1.claim_many(3) == [], "no free slot left"
    assert Slot.objects.filter(agent_id=a1.id, state="running").count() == 3


# --- one owner, one event row per change --------------------------------------------------------


def test_it_records_every_job_slot_and_warmup_change_as_an_event(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    task = apply_pending(setup, a1)
    run_confirm(task_id=task.id, actor="test")
    apply = a1.claim()
    a1.ack(apply)
    a1.finish(apply)

    def states(subject):
        return [(e.from_state, e.to_state) for e in DispatchEvent.objects.filter(task=task, subject=subject)]

    assert states("job") == [
        ("", "queued"), ("queued", "running"), ("running", "succeeded"),  # the plan
        ("", "running"), ("running", "succeeded"),  # the apply, created already assigned
    ]
    assert states("slot") == [("idle", "running"), ("running", "reserved"), ("reserved", "running"),
                              ("running", "idle")]
    assert states("warmup")[0] == ("none", "ready")


# --- the fast path survives an agent restart ---------------------------------------------------


def test_it_resumes_a_restarted_agent_that_presents_its_credential(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    task = apply_pending(setup, a1)
    slot = reservation(task)

    # The process is SIGKILLed and started again: same name, the credential from its work
    # root, and the warm dir it found on disk. The old record is still online.
    resp = a1.register(credential=a1.token, warm_dirs=[{"task": task.id, "plan_hash": task.plan_hash}])
    assert resp.status_code == 201, resp.content
    assert resp.json()["agent_id"] == a1.id and resp.json()["resumed"] is True
    assert resp.json()["release"] == []
    assert reservation(task) == slot, "the reservation stands"

    run_confirm(task_id=task.id, actor="test")
    pushed = a1.claim()
    assert pushed["kind"] == "apply" and pushed["cold_reason"] == ""


def test_it_releases_reservations_a_restarted_agent_no_longer_has_on_disk(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    task = apply_pending(setup, a1)
    resp = a1.register(credential=a1.token, warm_dirs=[{"task": 999999, "plan_hash": "x"}])
    assert resp.json()["resumed"] is True
    assert resp.json()["release"] == [999999], "a dir the server does not reserve goes"
    task.refresh_from_db()
    assert reservation(task) is None and task.warmup_status == "none"
    assert "no longer holds the warm dir" in task.warmup_message
    assert Job.objects.filter(task=task, kind="warmup", status="queued").exists()


def test_it_requeues_the_plan_a_restarted_agent_was_running(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    task = run_create(workspace=setup[2], operation="plan", actor="test")
    job = a1.claim()
    a1.register(credential=a1.token)
    task.refresh_from_db()
    assert task.status == "plan_queued" and "a1 restarted" in task.message
    again = a1.claim()
    assert again["id"] == job["id"] and again["fence"] == job["fence"] + 1


def test_it_refuses_a_second_process_with_the_same_name_but_no_credential(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    resp = a1.register()
    assert resp.status_code == 409
    assert "an agent named 'a1' is already online" in resp.json()["detail"]
    resp = a1.register(credential="agent-not-the-credential")
    assert resp.status_code == 409
    assert Agent.objects.filter(name="a1").count() == 1

    # Once the old record is offline, the name is free: a new agent, never a merge.
    agent_reports.agent_set_offline(agent_id=a1.id, reason="test")
    resp = a1.register()
    assert resp.status_code == 201 and resp.json()["agent_id"] != a1.id and resp.json()["resumed"] is False


# --- a full pool never stalls ------------------------------------------------------------------


def test_it_releases_the_oldest_reservation_when_a_plan_finds_every_slot_reserved(setup, client,
                                                                                  django_capture_on_commit_callbacks):
    pool, token, ws = setup
    a1 = FakeAgent(client, token, "a1", slots=2)
    first = apply_pending(setup, a1)
    second_ws = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    second = run_create(workspace=second_ws, operation="plan_and_apply", actor="test")
    a1.plan(a1.claim())
    assert Slot.objects.filter(agent_id=a1.id, state="reserved").count() == 2

    third = run_create(workspace=make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF}),
                       operation="plan", actor="test")
    job = a1.claim()
    assert job is not None and job["kind"] == "plan" and job["task"]["id"] == third.id
    first.refresh_from_db()
    second.refresh_from_db()
    assert reservation(first) is None, "the oldest reservation made room"
    assert first.warmup_status == "none" and "released to make room: pool" in first.warmup_message
    assert reservation(second) is not None, "only as many as needed"
    # The released run re-warms later: its warmup waits behind plans and applies.
    assert Job.objects.filter(task=first, kind="warmup", status="queued").exists()


def test_a_full_pool_keeps_a_fresh_reservation_for_its_grace_then_releases_it(setup, client, settings):
    """A person reading the plan they just queued keeps the fast path: a reservation younger
    than IAC_RESERVATION_GRACE_SECONDS is not released for a queued plan, which says why it
    waits; once the grace is over, the sweep releases it and the plan takes the slot."""
    from tasks_app.selectors import run_waiting_reason

    settings.IAC_RESERVATION_GRACE_SECONDS = 30
    pool, token, ws = setup
    a1 = FakeAgent(client, token, "a1", slots=1)
    pending = apply_pending(setup, a1)
    plan_run = run_create(workspace=make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF}),
                          operation="plan", actor="test")
    sweep.sweep()
    assert a1.claim() is None, "a 0 s old reservation was given away"
    assert reservation(pending) is not None
    plan_run.refresh_from_db()
    assert "released for this run once its run has waited 30s for Confirm" in run_waiting_reason(plan_run)

    Task.objects.filter(id=pending.id).update(warmup_at=timezone.now() - timedelta(seconds=31))
    sweep.sweep()
    pending.refresh_from_db()
    assert reservation(pending) is None and "released to make room" in pending.warmup_message
    job = a1.claim()
    assert job is not None and job["task"]["id"] == plan_run.id


def test_it_says_why_a_queued_plan_waits(setup, client):
    pool, token, ws = setup
    task = run_create(workspace=ws, operation="plan", actor="test")
    assert waiting_reason(task).startswith(f"queued: no agent of pool '{pool.name}' is online (gives up at ")

    a1 = FakeAgent(client, token, "a1", slots=1)
    running = a1.claim()
    assert running["task"]["id"] == task.id
    other = run_create(workspace=make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF}),
                       operation="plan", actor="test")
    assert Task.objects.get(id=other.id).status == "plan_queued"
    assert waiting_reason(other) == f"queued: the one slot of pool '{pool.name}' is busy (1 running)"


# --- terraform versions ------------------------------------------------------------------------


def test_it_sends_a_plans_warmup_and_apply_only_to_agents_with_its_terraform_version(setup, client):
    pool, token, ws = setup
    a1 = FakeAgent(client, token, "a1", terraform_version="1.11.4")
    task = apply_pending(setup, a1)
    task.refresh_from_db()
    assert task.terraform_version == "1.11.4", "the plan records the version it was made with"
    agent_reports.agent_set_offline(agent_id=a1.id, reason="test")

    other = FakeAgent(client, token, "other", terraform_version="1.9.0")
    assert other.claim() is None, "a warmup on another version is never attempted"
    run_confirm(task_id=task.id, actor="test")
    assert other.claim() is None, "nor a cold apply"
    assert waiting_reason(task).startswith(f"queued: no online agent of pool '{pool.name}' has terraform 1.11.4 "
                                           "(online agents have 1.9.0; gives up at ")
    same = FakeAgent(client, token, "same", terraform_version="1.11.4")
    job = same.claim()
    assert job["kind"] == "apply" and job["task"]["id"] == task.id


def test_it_holds_a_pinned_workspaces_plan_for_an_agent_with_the_pinned_version(setup, client):
    pool, token, _ = setup
    ws = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF}, terraform_version="1.5.7")
    a1 = FakeAgent(client, token, "a1", terraform_version="1.11.4")
    task = run_create(workspace=ws, operation="plan", actor="test")
    assert a1.claim() is None
    assert waiting_reason(task).startswith(f"queued: no online agent of pool '{pool.name}' has terraform 1.5.7 "
                                           "(online agents have 1.11.4; gives up at ")
    pinned = FakeAgent(client, token, "pinned", terraform_version="1.5.7")
    assert pinned.claim()["task"]["id"] == task.id


# --- Confirm during a warmup -------------------------------------------------------------------


def warming(setup, client):
    """A run whose plan agent died, with a warmup running on a2."""
    _, token, _ = setup
    a1 = FakeAgent(client, token, "a1")
    task = apply_pending(setup, a1)
    agent_reports.agent_set_offline(agent_id=a1.id, reason="test")
    a2 = FakeAgent(client, token, "a2")
    warmup = a2.claim()
    assert warmup["kind"] == "warmup"
    task.refresh_from_db()
    assert task.warmup_status == "warming"
    return task, a2, warmup


def test_it_hands_an_apply_confirmed_during_a_warmup_to_that_warmup(setup, client):
    task, a2, warmup = warming(setup, client)
    a3 = FakeAgent(client, setup[1], "a3")
    run_confirm(task_id=task.id, actor="test")
    assert a3.claim() is None, "the apply waits for the warmup, not for any agent"
    assert waiting_reason(task).startswith("queued: waiting for the warmup on a2 to finish")

    answer = a2.finish(warmup, kept_dir=True).json()
    # Handed over in the warmup's own answer, the moment the dir is ready: no push, no poll.
    assert answer["keep_dir"] is True
    [apply] = answer["jobs"]
    assert apply["kind"] == "apply" and apply["task"]["id"] == task.id
    assert Job.objects.get(id=apply["id"]).agent_id == a2.id
    assert a2.claim() is None  # and not pushed as well: it is not handed out twice


def test_it_runs_the_waiting_apply_cold_when_the_warmup_fails(setup, client):
    task, a2, warmup = warming(setup, client)
    a3 = FakeAgent(client, setup[1], "a3")
    run_confirm(task_id=task.id, actor="test")
    a2.finish(warmup, "failed", error="init failed")
    job = a3.claim()
    assert job["kind"] == "apply" and "the warmup it waited for failed on a2: init failed" in job["cold_reason"]


def test_it_runs_the_waiting_apply_cold_when_the_warmup_takes_too_long(setup, client):
    task, a2, warmup = warming(setup, client)
    a3 = FakeAgent(client, setup[1], "a3")
    run_confirm(task_id=task.id, actor="test")
    Job.objects.filter(task=task, kind="apply").update(hold_until=timezone.now() - timedelta(seconds=1))
    job = a3.claim()
    assert job["kind"] == "apply" and "did not finish within 120s of Confirm" in job["cold_reason"]
    assert a2.finish(warmup, kept_dir=True).json() == {"keep_dir": False}, "the late warm dir is not needed"


# --- pushes keyed by job ------------------------------------------------------------------------


def test_it_delivers_two_applies_confirmed_a_moment_apart_on_one_agent(setup, client):
    pool, token, ws = setup
    a1 = FakeAgent(client, token, "a1")
    first = apply_pending(setup, a1)
    second_ws = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    second = run_create(workspace=second_ws, operation="plan_and_apply", actor="test")
    a1.plan(a1.claim())
    run_confirm(task_id=first.id, actor="test")
    run_confirm(task_id=second.id, actor="test")

    got = {a1.claim()["task"]["id"], a1.claim()["task"]["id"]}
    assert got == {first.id, second.id}, "the second push must not overwrite the first"
    assert a1.claim() is None


# --- the control loop --------------------------------------------------------------------------


def test_it_runs_every_sweep_step_even_when_one_fails(db, caplog):
    ran = []

    def broken():
        raise RuntimeError("boom")

    result = sweep.sweep([("first", broken), ("second", lambda: ran.append(1) or "ok")])
    assert result == {"first": "error: boom", "second": "ok"}
    assert ran == [1]
    assert "sweep step first failed" in caplog.text


def test_it_tells_the_confirm_dialog_that_the_apply_will_wait_for_the_running_warmup(setup, client, alice):
    task, a2, warmup = warming(setup, client)
    client.force_login(alice)
    page = client.get(f"/runs/{task.id}/").content.decode()
    assert "A warmup is running on agent a2: a confirmed apply starts there the moment it is ready" in page
