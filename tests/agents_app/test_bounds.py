"""A bound on every wait, and durable follow-ups, through the real services on the
real database: agents are registered rows that claim, post plans and results the way the
agent API does (no HTTP, no terraform). Time passes by moving a row's timestamps back.

These tests run inside one transaction that is never committed (pytest-django's default),
so no `transaction.on_commit` callback ever runs: exactly a process that died between a
commit and its after-commit work. What must still happen is done by one sweep."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone

from agents_app.models import Agent
from agents_app.protocol import PROTOCOL_VERSION, Heartbeat, JobResult, LogEvents, LogPost, Registration
from iacplatform.unit_of_work import unit_of_work
from tasks_app.dispatch import agent_reports
from tasks_app.dispatch.job_output import job_upload_plan
from tasks_app.dispatch.models import DispatchEvent, Job, Slot
from tasks_app.models import StateLock, Task, TaskEvent
from tasks_app.selectors import duration_text
from tasks_app.serializers import RunSerializer
from tasks_app.services import sweep
from tasks_app.services.runs import run_cancel, run_confirm, run_create, run_discard, run_transition
from tasks_app.services.state import state_lock
from tasks_app.states import RunStatus
from tests.factories import DEMO_MAIN_TF, make_agent, make_workspace

pytestmark = pytest.mark.django_db

PLAN = b"PK-fake-plan-bytes"


def claim(agent: Agent) -> dict | None:
    jobs = agent_reports.agent_claim(agent_id=agent.id, limit=1)
    return jobs[0] if jobs else None


def plan(agent: Agent, job: dict, *, changes: bool = True, keep: bool = True) -> bool:
    job_upload_plan(agent=agent, job_id=job["id"], fence=job["fence"], data=PLAN,
                    sha256=hashlib.sha256(PLAN).hexdigest(), summary={"add": 1}, has_changes=changes)
    return finish(agent, job, kept_dir=keep).keep_dir


def finish(agent: Agent, job: dict, outcome: str = "succeeded", **result):
    return agent_reports.job_result(agent=agent, job_id=job["id"], fence=job["fence"],
                              result=JobResult(outcome=outcome, **result))


def ack(agent: Agent, job: dict) -> None:
    agent_reports.job_log(agent=agent, job_id=job["id"], fence=job["fence"], post=LogPost(seq=1, events=LogEvents(ack=True)))


def heartbeat(agent: Agent, *jobs: dict):
    return agent_reports.agent_heartbeat(agent=agent, heartbeat=Heartbeat(running_jobs=[j["id"] for j in jobs]))


def back(job: dict | int, **fields) -> None:
    """Move a job's timestamps into the past (time passes)."""
    Job.objects.filter(id=job["id"] if isinstance(job, dict) else job).update(**fields)


def ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


def status(task: Task) -> str:
    task.refresh_from_db()
    return task.status


def reason(task: Task) -> str | None:
    task.refresh_from_db()
    return RunSerializer(task).data["waiting_reason"]


@pytest.fixture
def ws(setup):
    return setup[2]


@pytest.fixture
def pool(setup):
    return setup[0]


@pytest.fixture
def agent(pool):
    return make_agent(pool=pool, name="a1")[0]


def applying(ws, agent) -> tuple[Task, dict]:
    """A run whose apply runs on `agent`, acknowledged (terraform started)."""
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()  # run_create's start was an after-commit callback
    job = claim(agent)
    assert plan(agent, job)
    run_confirm(task_id=task.id, actor="test")
    apply = Job.objects.get(task=task, kind="apply")
    payload = {"id": apply.id, "fence": apply.fence}
    ack(agent, payload)
    assert status(task) == RunStatus.APPLYING
    return task, payload


# --- durable follow-ups --------------------------------------------------------------------------


def test_one_sweep_starts_a_run_whose_start_was_lost_after_its_commit(ws):
    task = run_create(workspace=ws, operation="plan", actor="test")
    assert status(task) == RunStatus.PENDING, "the start is an after-commit callback, never run here"
    sweep.sweep()
    assert status(task) == RunStatus.PLAN_QUEUED
    assert Job.objects.filter(task=task, kind="plan", status="queued").count() == 1
    sweep.sweep()
    assert Job.objects.filter(task=task, kind="plan").count() == 1, "idempotent"


def test_one_sweep_starts_the_next_run_when_the_workspace_freed_but_its_callback_was_lost(ws, agent):
    first = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    second = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()
    assert (status(first), status(second)) == (RunStatus.PLAN_QUEUED, RunStatus.PENDING)
    assert plan(agent, claim(agent))
    run_discard(task_id=first.id, actor="test")  # frees the workspace; its start-next callback is lost
    assert status(second) == RunStatus.PENDING
    sweep.sweep()
    assert status(second) == RunStatus.PLAN_QUEUED


def test_one_sweep_requests_the_warmup_a_plan_without_a_kept_dir_lost_after_its_commit(ws, agent):
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()
    assert plan(agent, claim(agent), keep=False) is False
    assert status(task) == RunStatus.APPLY_PENDING
    assert not Job.objects.filter(task=task, kind="warmup").exists(), "warmups_ensure was an after-commit callback"
    assert reason(task) == "apply_pending: waiting for confirmation (not warm yet)"
    sweep.sweep()
    assert Job.objects.filter(task=task, kind="warmup", status="queued").count() == 1
    sweep.sweep()
    assert Job.objects.filter(task=task, kind="warmup").count() == 1, "idempotent"


def test_an_auto_apply_run_is_confirmed_in_the_plans_own_commit_and_its_lost_push_is_requeued(ws, agent, settings):
    ws.auto_apply = True
    ws.save()
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()
    assert plan(agent, claim(agent))
    # Committed with the plan's result: nothing after the commit is needed to confirm it.
    assert status(task) == RunStatus.APPLY_QUEUED
    apply = Job.objects.get(task=task, kind="apply")
    assert apply.status == "running" and apply.agent_id == agent.id  # pushed after commit: lost here
    assert reason(task) == "queued: handed to a1, waiting for it to start"
    back(apply.id, claimed_at=ago(settings.IAC_TARGET_CLAIM_TIMEOUT_SECONDS + 1))
    sweep.sweep()
    apply.refresh_from_db()
    # Late is not lost: no push to take back, so the server cannot tell whether the agent has
    # the apply (taken, its ack lost) until the agent's heartbeats say it does not.
    assert apply.status == "running"
    for _ in range(2):
        agent_reports.agent_heartbeat(agent=agent, heartbeat=Heartbeat(running_jobs=[]))
    apply.refresh_from_db()
    assert apply.status == "queued" and apply.agent_id is None, "the unacknowledged apply goes back to the pool"
    assert claim(agent)["id"] == apply.id


def test_one_sweep_confirms_an_auto_apply_run_still_waiting_for_confirmation(ws, agent):
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()
    assert plan(agent, claim(agent))
    ws.auto_apply = True  # e.g. the plan's own confirm failed, or the workspace became auto-apply
    ws.save()
    sweep.sweep()
    assert status(task) == RunStatus.APPLY_QUEUED
    assert [e.actor for e in TaskEvent.objects.filter(task=task, to_status="apply_queued")] == ["auto-apply"]


def test_one_sweep_gives_a_confirmed_run_without_an_apply_job_its_job(ws, agent):
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()
    assert plan(agent, claim(agent))
    # Confirm's status change committed, and the process died before the apply job existed.
    with unit_of_work() as uow:
        locked = Task.objects.select_for_update().get(id=task.id)
        run_transition(locked, RunStatus.APPLY_QUEUED, uow=uow, actor="test")
    assert reason(task) == "queued: no job yet (the sweep creates it)"
    assert sweep.sweep()["apply_jobs"] == [task.id]
    job = Job.objects.get(task=task, kind="apply")
    assert job.status == "queued" and "the sweep queued it" in job.cold_reason
    assert sweep.sweep()["apply_jobs"] == [], "idempotent"
    taken = claim(agent)
    assert taken["id"] == job.id and taken["kind"] == "apply"
    assert not Slot.objects.filter(task=task, state="reserved").exists(), "the warm dir is of no use to a cold apply"


# --- the plan's and the apply's bounds ---------------------------------------------------------


def test_a_plan_past_its_bound_is_interrupted_and_the_run_errors_with_the_bound(ws, pool, agent):
    task = run_create(workspace=ws, operation="plan", actor="test")
    sweep.sweep()
    job = claim(agent)
    back(job, claimed_at=ago(3599))
    sweep.sweep()
    assert heartbeat(agent, job).cancel == [], "within its bound"

    back(job, claimed_at=ago(3601))
    assert sweep.sweep()["bounds"]["stopped"] == [job["id"]]
    order = heartbeat(agent, job).cancel
    assert [(o.id, o.force, o.grace) for o in order] == [(job["id"], False, 30)]  # SIGINT, SIGKILL after 30s
    message = f"the plan ran past its 1h bound (pool {pool.name}); terraform was interrupted"
    assert DispatchEvent.objects.filter(subject="job", subject_id=job["id"], message=message).exists()
    task.refresh_from_db()
    assert (task.status, task.message) == (RunStatus.PLANNING, message), "the run says so at once"
    assert TaskEvent.objects.filter(task=task, from_status="planning", to_status="planning", message=message).exists()
    sweep.sweep()
    assert heartbeat(agent, job).cancel == order, "fired once, repeated to the agent until the job ends"

    finish(agent, job, "cancelled", error="cancelled while terraform was running")
    task.refresh_from_db()
    assert (task.status, task.message) == (RunStatus.ERRORED, message)
    assert TaskEvent.objects.filter(task=task, to_status="errored", message=message).exists()
    assert not Slot.objects.filter(agent=agent).exclude(state="idle").exists()


def test_an_apply_past_its_bound_gets_sigint_with_the_long_grace_and_the_run_says_how_it_stopped(ws, pool, agent):
    task, apply = applying(ws, agent)
    state_lock(workspace=ws, info={"ID": "tf-lock"}, actor="test", job=Job.objects.get(id=apply["id"]))
    back(apply, acked_at=ago(7201))
    sweep.sweep()
    assert [(o.force, o.grace) for o in heartbeat(agent, apply).cancel] == [(False, 900)]

    finish(agent, apply, "cancelled", error="cancelled while terraform was running")
    task.refresh_from_db()
    assert task.status == RunStatus.ERRORED
    assert task.message.startswith(
        f"the apply ran past its 2h bound (pool {pool.name}); terraform was interrupted (SIGINT) so that it stops "
        f"at a safe point, saves the state and releases its lock; SIGKILL follows only after 15 min; "
        f"it stopped at a safe point")
    assert "not re-run automatically" in task.message
    assert not StateLock.objects.filter(workspace=ws).exists()


def test_a_timed_out_job_its_agent_does_not_stop_is_killed_after_the_grace_then_given_up(ws, pool, agent, settings):
    task, apply = applying(ws, agent)
    state_lock(workspace=ws, info={"ID": "tf-lock"}, actor="test", job=Job.objects.get(id=apply["id"]))
    back(apply, acked_at=ago(7201))
    sweep.sweep()
    back(apply, timed_out_at=ago(901))
    assert sweep.sweep()["bounds"]["killed"] == [apply["id"]]
    assert [(o.force, o.grace) for o in heartbeat(agent, apply).cancel] == [(True, 900)]
    assert status(task) == RunStatus.APPLYING, "the agent still heartbeats the job: it is not lost yet"

    back(apply, timed_out_at=ago(900 + settings.IAC_AGENT_OFFLINE_AFTER_SECONDS + 1))
    assert sweep.sweep()["bounds"]["given_up"] == [apply["id"]]
    task.refresh_from_db()
    assert task.status == RunStatus.ERRORED
    offline = duration_text(settings.IAC_AGENT_OFFLINE_AFTER_SECONDS)
    assert "ran past its 2h bound" in task.message and f"a1 did not stop it within 15 min + {offline}" in task.message
    assert Job.objects.get(id=apply["id"]).status == "failed"
    assert not StateLock.objects.filter(workspace=ws).exists(), "the lock is released with the job"
    assert not Slot.objects.filter(agent=agent).exclude(state="idle").exists()


def test_a_timed_out_plan_whose_agent_dies_is_not_planned_again(ws, agent):
    task = run_create(workspace=ws, operation="plan", actor="test")
    sweep.sweep()
    job = claim(agent)
    back(job, claimed_at=ago(3601))
    sweep.sweep()
    agent_reports.agent_set_offline(agent_id=agent.id, reason="test")
    task.refresh_from_db()
    assert task.status == RunStatus.ERRORED and "ran past its 1h bound" in task.message
    assert Job.objects.get(id=job["id"]).status == "failed"


# --- no agent online -----------------------------------------------------------------------------


def test_a_queued_plan_with_no_agent_online_errors_after_the_no_agent_bound(ws, pool):
    task = run_create(workspace=ws, operation="plan", actor="test")
    sweep.sweep()
    job = Job.objects.get(task=task)
    gives_up = timezone.localtime(job.created_at + timedelta(seconds=1800)).strftime("%H:%M:%S")
    assert reason(task) == f"queued: no agent of pool '{pool.name}' is online (gives up at {gives_up})"

    back(job.id, created_at=ago(1799))
    sweep.sweep()
    assert status(task) == RunStatus.PLAN_QUEUED
    back(job.id, created_at=ago(1801))
    assert sweep.sweep()["no_agent"] == [task.id]
    task.refresh_from_db()
    assert (task.status, task.message) == (RunStatus.ERRORED, f"no agent of pool {pool.name} came online within 30 min")
    assert Job.objects.get(id=job.id).status == "cancelled"


def test_the_no_agent_bound_counts_from_the_last_agent_going_offline_and_not_while_one_is_online(ws, pool):
    agent = make_agent(pool=pool, name="a1", slots=1)[0]
    run_create(workspace=make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF}), operation="plan", actor="test")
    sweep.sweep()
    claim(agent)
    task = run_create(workspace=ws, operation="plan", actor="test")
    sweep.sweep()
    job = Job.objects.get(task=task)
    back(job.id, created_at=ago(4000))
    sweep.sweep()
    assert status(task) == RunStatus.PLAN_QUEUED, "an agent is online: the job waits for a slot, not for an agent"
    assert reason(task) == f"queued: the one slot of pool '{pool.name}' is busy (1 running)"

    Agent.objects.filter(id=agent.id).update(last_heartbeat_at=ago(3600))
    sweep.sweep()  # the agent is declared offline now
    assert status(task) == RunStatus.PLAN_QUEUED, "the bound counts from the moment the last agent went away"
    Agent.objects.filter(id=agent.id).update(offline_at=ago(1801))
    sweep.sweep()
    assert status(task) == RunStatus.ERRORED


def test_a_confirmed_apply_with_no_agent_online_errors_after_the_no_agent_bound(ws, pool, agent):
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()
    assert plan(agent, claim(agent), keep=False) is False
    agent_reports.agent_set_offline(agent_id=agent.id, reason="test")
    run_confirm(task_id=task.id, actor="test")
    assert reason(task).startswith(f"queued: no agent of pool '{pool.name}' is online (gives up at ")
    Agent.objects.filter(id=agent.id).update(offline_at=ago(1801))
    back(Job.objects.get(task=task, kind="apply").id, created_at=ago(1801))
    sweep.sweep()
    task.refresh_from_db()
    assert (task.status, task.message) == (RunStatus.ERRORED, f"no agent of pool {pool.name} came online within 30 min")


# --- apply_pending ---------------------------------------------------------------------------------


def test_apply_pending_waits_forever_by_default_and_is_discarded_past_the_pools_bound(ws, pool, agent):
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()
    assert plan(agent, claim(agent))
    TaskEvent.objects.filter(task=task, to_status="apply_pending").update(created_at=ago(30 * 24 * 3600))
    sweep.sweep()
    assert status(task) == RunStatus.APPLY_PENDING, "off by default"

    pool.apply_pending_timeout_seconds = 3600
    pool.save()
    TaskEvent.objects.filter(task=task, to_status="apply_pending").update(created_at=ago(3599))
    assert "; discarded at " in reason(task)
    sweep.sweep()
    assert status(task) == RunStatus.APPLY_PENDING
    TaskEvent.objects.filter(task=task, to_status="apply_pending").update(created_at=ago(3601))
    assert sweep.sweep()["apply_pending_bound"] == [task.id]
    task.refresh_from_db()
    assert task.status == RunStatus.DISCARDED
    assert task.message == f"not confirmed within its 1h bound (pool {pool.name}): discarded; queue a new run to apply"
    assert not Slot.objects.filter(task=task, state="reserved").exists(), "its warm dir is released"


# --- why a run waits -------------------------------------------------------------------------------


def test_every_waiting_run_says_why_it_waits(ws, pool, agent):
    first = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    second = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()
    assert reason(second) == f"pending: run #{first.id} (plan_queued) holds the workspace"
    assert reason(first) == f"queued: waiting for an agent of pool '{pool.name}' to take it (3 free slots)"
    ws.locked = True
    ws.save()
    assert reason(second) == "pending: the workspace is locked"

    job = claim(agent)
    assert reason(first) is None, "planning: it does not wait"
    assert plan(agent, job)
    first.refresh_from_db()
    until = timezone.localtime(first.warmup_expires_at).strftime("%H:%M:%S")
    slot = Slot.objects.get(task=first, state="reserved")
    assert reason(first) == f"apply_pending: waiting for confirmation (warm on a1 slot {slot.index} until {until})"

    agent_reports.agent_set_offline(agent_id=agent.id, reason="test")
    a2 = make_agent(pool=pool, name="a2")[0]
    sweep.sweep()  # the warmup is requested again
    assert claim(a2)["kind"] == "warmup"
    assert reason(first) == "apply_pending: waiting for confirmation (warming up on a2)"

    run_confirm(task_id=first.id, actor="test")
    assert reason(first).startswith("queued: waiting for the warmup on a2 to finish")
    assert RunSerializer(Task.objects.get(id=second.id)).data["status"] == "pending"


def test_the_api_documents_the_waiting_reason_as_a_nullable_string(api):
    schema = api.get("/api/schema/?format=json").json()
    field = schema["components"]["schemas"]["Run"]["properties"]["waiting_reason"]
    assert field["type"] == "string" and field["nullable"] is True and "why the run waits" in field["description"]


# --- state locks are never orphaned ------------------------------------------------------------


def _end(how: str, agent: Agent, token: str, task: Task, job: dict, settings) -> None:
    """End the running job `how`, the way it happens for real."""
    if how in ("succeeded", "failed"):
        if how == "succeeded" and Job.objects.get(id=job["id"]).kind == "plan":
            plan(agent, job)
        else:
            finish(agent, job, how, error="" if how == "succeeded" else "terraform exited with 1")
    elif how in ("cancelled", "force_cancelled"):
        run_cancel(task_id=task.id, actor="test", force=how == "force_cancelled")
        assert [o.force for o in heartbeat(agent, job).cancel] == [how == "force_cancelled"]
        finish(agent, job, "cancelled", error="cancelled while terraform was running")
    elif how == "agent_offline":
        agent_reports.agent_set_offline(agent_id=agent.id, reason="test")
    elif how == "lease_expired":
        back(job, lease_expires_at=ago(1))
        sweep.sweep()
    elif how == "agent_restarted":
        agent_reports.agent_join(pool=agent.pool, registration=Registration(
            name=agent.name, credential=token, protocol_version=PROTOCOL_VERSION))
    elif how == "timed_out":
        back(job, claimed_at=ago(30 * 24 * 3600), acked_at=ago(30 * 24 * 3600))
        sweep.sweep()
        back(job, timed_out_at=ago(3600 + settings.IAC_AGENT_OFFLINE_AFTER_SECONDS))
        sweep.sweep()
    else:
        raise AssertionError(how)


ENDS = ["succeeded", "failed", "cancelled", "force_cancelled", "agent_offline", "lease_expired", "agent_restarted",
        "timed_out"]


@pytest.mark.parametrize("how", ENDS)
def test_a_plans_state_lock_is_released_however_the_plan_ends(ws, pool, how, settings):
    agent, token = make_agent(pool=pool, name="a1")
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()
    job = claim(agent)
    state_lock(workspace=ws, info={"ID": "plan-lock"}, actor="test", job=Job.objects.get(id=job["id"]))
    _end(how, agent, token, task, job, settings)
    assert Job.objects.get(id=job["id"]).status != "running"  # a plan re-queued after its agent died: queued
    assert not StateLock.objects.filter(workspace=ws).exists(), f"a plan that ended by '{how}' left its lock"


@pytest.mark.parametrize("how", ENDS)
def test_an_applys_state_lock_is_released_however_the_apply_ends(ws, pool, how, settings):
    agent, token = make_agent(pool=pool, name="a1")
    task, apply = applying(ws, agent)
    state_lock(workspace=ws, info={"ID": "apply-lock"}, actor="test", job=Job.objects.get(id=apply["id"]))
    _end(how, agent, token, task, apply, settings)
    assert Job.objects.get(id=apply["id"]).status in ("succeeded", "failed", "cancelled")
    assert not StateLock.objects.filter(workspace=ws).exists(), f"an apply that ended by '{how}' left its lock"
    assert status(task) in (RunStatus.APPLIED, RunStatus.ERRORED, RunStatus.CANCELLED)


def test_a_run_whose_warmups_failed_says_confirm_runs_cold(ws, agent, settings):
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()
    assert plan(agent, claim(agent), keep=False) is False
    for _ in range(settings.IAC_WARMUP_MAX_RETRIES):
        sweep.sweep()  # requests the next warmup
        warmup = claim(agent)
        assert warmup["kind"] == "warmup"
        finish(agent, warmup, "failed", error="init failed")
    assert reason(task) == "apply_pending: waiting for confirmation (not warm: the warmup failed, Confirm runs cold)"
