"""The agent protocol and the job invariants, driven through the agent HTTP endpoints
(Django test client; no agent process, no terraform)."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from agents_app.models import Agent
from tasks_app.dispatch.agent_reports import agent_set_offline
from tasks_app.dispatch.models import Job, Slot
from tasks_app.models import LogChunk
from tasks_app.services.runs import run_confirm, run_create
from tasks_app.tasks import sweep
from tests.agents_app.fakes import FakeAgent, apply_pending, reservation
from tests.factories import DEMO_MAIN_TF, make_workspace

pytestmark = pytest.mark.django_db(transaction=True)

def test_it_refuses_unknown_tokens_and_bad_registrations(setup, client):
    _, token, _ = setup
    assert client.post("/agent/v1/register", "{}", content_type="application/json",
                       HTTP_AUTHORIZATION="Bearer nope").status_code == 401
    resp = client.post("/agent/v1/register", "{", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["detail"]
    resp = client.post("/agent/v1/register", "{}", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert resp.status_code == 400 and "'name'" in resp.json()["detail"]
    assert client.post("/agent/v1/heartbeat", "{}", content_type="application/json",
                       HTTP_AUTHORIZATION="Bearer nope").status_code == 401


def test_it_reserves_the_plans_slot_so_the_run_is_ready_at_once(setup, client):
    agent = FakeAgent(client, setup[1], "a1")
    task = apply_pending(setup, agent)
    assert task.warmup_status == "ready"
    assert reservation(task).agent_id == agent.id
    assert task.warmup_expires_at > timezone.now() + timedelta(minutes=29)


def test_it_pushes_the_confirmed_apply_to_the_reserving_agent_and_takes_back_an_untaken_push(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    task = apply_pending(setup, a1)
    a2 = FakeAgent(client, setup[1], "a2")
    run_confirm(task_id=task.id, actor="test")

    assert a2.claim() is None, "another agent must not steal the pushed apply"
    job_id = Job.objects.get(task=task, kind="apply").id
    # a1 does not take the push (its claim loop hangs): once the deadline passes, the sweep
    # takes the push back, so a1 can never get it, and gives the apply to the pool, cold.
    Job.objects.filter(id=job_id).update(claimed_at=timezone.now() - timedelta(seconds=10))
    assert sweep()["leases"] == [job_id]
    job = a2.claim()
    assert job["id"] == job_id and job["fence"] == 2
    assert a1.claim() is None, "a push taken back is never handed out"
    assert "a1 did not take the apply within 2s" in job["cold_reason"]
    assert not Slot.objects.filter(agent_id=a1.id, state__in=["reserved", "running"]).exists()


def test_a_taken_push_is_never_sent_elsewhere_on_the_ack_timeout_alone(setup, client):
    """The agent took the apply; its ack is lost on the way. It may be running terraform
    already: waiting longer than the ack timeout must not hand it to another agent."""
    a1 = FakeAgent(client, setup[1], "a1")
    task = apply_pending(setup, a1)
    run_confirm(task_id=task.id, actor="test")
    pushed = a1.claim()
    assert pushed["kind"] == "apply"
    Job.objects.filter(id=pushed["id"]).update(claimed_at=timezone.now() - timedelta(seconds=10))
    assert sweep()["leases"] == []
    # Its heartbeat reports the job: that is its acknowledgement, and the run is applying.
    assert a1.post("/agent/v1/heartbeat", {"running_jobs": [pushed["id"]]}).status_code == 200
    job = Job.objects.get(id=pushed["id"])
    assert job.status == "running" and job.acked_at is not None and job.fence == pushed["fence"]
    task.refresh_from_db()
    assert task.status == "applying"
    assert sweep()["leases"] == []
    assert a1.finish(pushed).status_code == 200
    task.refresh_from_db()
    assert task.status == "applied"


def test_an_apply_missing_from_two_heartbeats_never_reached_its_agent_and_goes_elsewhere(setup, client):
    """The push was taken but the claim's answer was lost on the way: the agent's heartbeats
    never report the job. The second heartbeat after the assignment was built after it was
    committed, so the agent does not have it: the apply goes to the pool, cold."""
    a1 = FakeAgent(client, setup[1], "a1")
    task = apply_pending(setup, a1)
    run_confirm(task_id=task.id, actor="test")
    lost = a1.claim()  # the answer the agent never read
    assert a1.post("/agent/v1/heartbeat", {"running_jobs": []}).status_code == 200
    assert Job.objects.get(id=lost["id"]).status == "running", "one heartbeat may predate the claim's answer"
    assert a1.post("/agent/v1/heartbeat", {"running_jobs": []}).status_code == 200
    a2 = FakeAgent(client, setup[1], "a2")
    job = a2.claim()
    assert job["id"] == lost["id"] and job["fence"] == lost["fence"] + 1
    assert "a1 does not report it in its heartbeats" in job["cold_reason"]
    assert a1.ack(lost).status_code == 409, "a late copy of the job is fenced off"


def test_it_hands_a_job_to_one_claimer_and_fences_the_loser(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    _, _, ws = setup
    task = run_create(workspace=ws, operation="plan", actor="test")
    job = a1.claim()
    assert a1.claim() is None  # nothing else queued: a job is never handed out twice

    # The agent is declared dead; the plan is re-queued and claimed again by someone else.
    agent_set_offline(agent_id=a1.id, reason="test")
    a2 = FakeAgent(client, setup[1], "a2")
    job2 = a2.claim()
    assert job2["id"] == job["id"] and job2["fence"] == job["fence"] + 1

    # The first agent comes back: its heartbeat says it is gone, and its writes are refused.
    assert a1.post("/agent/v1/heartbeat", {}).status_code == 410
    assert a1.post(f"/agent/v1/jobs/{job['id']}/logs", {"seq": 1, "text": "late"}, fence=job["fence"]).status_code == 409
    assert a2.post(f"/agent/v1/jobs/{job['id']}/logs", {"seq": 1, "text": "x"}, fence=job["fence"]).status_code == 409
    unknown = a2.post(f"/agent/v1/jobs/{job['id']}/logs", {"seq": 1, "text": "x"}, token="not-a-token", fence=job2["fence"])
    assert unknown.status_code == 401 and "token" in unknown.json()["detail"]
    assert not LogChunk.objects.filter(job_id=job["id"]).exists()
    task.refresh_from_db()
    assert task.status == "planning"


def test_it_stores_each_log_chunk_once(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    task = run_create(workspace=setup[2], operation="plan", actor="test")
    job = a1.claim()
    for _ in range(2):  # a retried post after a timeout
        assert a1.post(f"/agent/v1/jobs/{job['id']}/logs", {"seq": 1, "text": "line one\n"},
                       fence=job["fence"]).status_code == 200
    a1.post(f"/agent/v1/jobs/{job['id']}/logs", {"seq": 2, "text": "line two\n"}, fence=job["fence"])
    from tasks_app.selectors import run_log_read

    assert run_log_read(task_id=task.id) == ("line one\nline two\n", 18)
    assert run_log_read(task_id=task.id, offset=9) == ("line two\n", 18)


def test_it_redacts_sensitive_values_from_logs(setup, client):
    from tasks_app.models import LogChunk, Variable

    var = Variable(workspace=setup[2], key="db_password", sensitive=True)
    var.set_value("hunter2-secret")
    var.save()
    a1 = FakeAgent(client, setup[1], "a1")
    run_create(workspace=setup[2], operation="plan", actor="test")
    job = a1.claim()
    assert job["variables"]["terraform"]["db_password"] == "hunter2-secret"
    a1.post(f"/agent/v1/jobs/{job['id']}/logs", {"seq": 1, "text": "password=hunter2-secret\n"}, fence=job["fence"])
    assert LogChunk.objects.get(job_id=job["id"]).text == "password=***\n"


def test_the_plan_and_the_pushed_apply_carry_every_variable_of_the_workspace(setup, client):
    """The claim and Confirm read the variables with the locked run (one query for both):
    plain and sensitive, terraform and env, an empty sensitive value, quotes, a newline and
    non-ASCII text; the sensitive ones decrypted for the job and listed for redaction."""
    from tasks_app.models import Variable

    def var(key: str, value: str, *, category: str = "terraform", sensitive: bool = False) -> None:
        v = Variable(workspace=setup[2], key=key, category=category, sensitive=sensitive)
        v.set_value(value)
        v.save()

    secret = "k3y-ünï" + chr(10) + "second line"
    var("region", 'eu-"west"-1 ✓')
    var("db_password", "hunter2-secret", sensitive=True)
    var("AWS_PROFILE", "bench", category="env")
    var("API_KEY", secret, category="env", sensitive=True)
    var("empty_secret", "", sensitive=True)
    expected = {
        "terraform": {"region": 'eu-"west"-1 ✓', "db_password": "hunter2-secret", "empty_secret": ""},
        "env": {"AWS_PROFILE": "bench", "API_KEY": secret},
    }
    a1 = FakeAgent(client, setup[1], "a1")
    task = run_create(workspace=setup[2], operation="plan_and_apply", actor="test")
    plan_job = a1.claim()
    assert a1.plan(plan_job) == {"keep_dir": True}
    run_confirm(task_id=task.id, actor="test")
    apply_job = a1.claim()
    assert apply_job["kind"] == "apply"
    for job in (plan_job, apply_job):
        assert job["variables"] == expected
        assert sorted(job["sensitive_values"]) == sorted(["hunter2-secret", secret])


def test_it_refuses_a_plan_upload_whose_bytes_do_not_match_the_hash(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    run_create(workspace=setup[2], operation="plan", actor="test")
    job = a1.claim()
    resp = a1.post(f"/agent/v1/jobs/{job['id']}/plan", {
        "plan_b64": base64.b64encode(b"abc").decode(), "sha256": "0" * 64, "summary": {}, "has_changes": True,
    }, fence=job["fence"])
    assert resp.status_code == 400 and "upload corrupted" in resp.json()["detail"]


def test_it_releases_reservations_requeues_plans_and_errors_applies_of_an_offline_agent(setup, client):
    pool, token, ws = setup
    a1 = FakeAgent(client, token, "a1")
    warm = apply_pending(setup, a1)
    other_ws = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    applying = run_create(workspace=other_ws, operation="plan_and_apply", actor="test")
    a1.plan(a1.claim())
    run_confirm(task_id=applying.id, actor="test")
    apply_job = a1.claim()
    assert apply_job["kind"] == "apply"
    assert a1.ack(apply_job).status_code == 200
    third_ws = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    planning = run_create(workspace=third_ws, operation="plan", actor="test")
    assert a1.claim()["kind"] == "plan"

    Agent.objects.filter(id=a1.id).update(last_heartbeat_at=timezone.now() - timedelta(minutes=5))
    from tasks_app.tasks import sweep

    assert sweep()["offline"] == [a1.id]

    warm.refresh_from_db()
    assert warm.warmup_status in ("none",) and reservation(warm) is None
    assert Job.objects.filter(task=warm, kind="warmup", status="queued").count() == 1  # re-warm elsewhere
    applying.refresh_from_db()
    assert applying.status == "errored" and "not re-run automatically" in applying.message
    assert Job.objects.filter(task=applying, kind="apply").count() == 1
    assert Job.objects.get(task=planning, kind="plan").status == "queued"


def test_it_stops_warming_after_three_failures(setup, client):
    pool, token, ws = setup
    a1 = FakeAgent(client, token, "a1")
    task = apply_pending(setup, a1)
    agent_set_offline(agent_id=a1.id, reason="test")
    a2 = FakeAgent(client, token, "a2")
    for attempt in range(1, 4):
        job = a2.claim()
        assert job is not None and job["kind"] == "warmup", attempt
        a2.finish(job, "failed", error="init failed")
        task.refresh_from_db()
        assert task.warmup_retry_count == attempt
    assert task.warmup_status == "failed"
    assert "giving up" in task.warmup_message
    assert a2.claim() is None

    result = run_confirm(task_id=task.id, actor="test")
    assert not result.refused
    job = a2.claim()
    assert job["kind"] == "apply" and "warmup failed 3 times" in job["cold_reason"]


def test_it_resets_the_retry_count_after_a_successful_warmup(setup, client):
    pool, token, ws = setup
    a1 = FakeAgent(client, token, "a1")
    task = apply_pending(setup, a1)
    agent_set_offline(agent_id=a1.id, reason="test")
    a2 = FakeAgent(client, token, "a2")
    job = a2.claim()
    a2.finish(job, "failed", error="flaky")
    job = a2.claim()
    assert a2.finish(job, kept_dir=True).json() == {"keep_dir": True}
    task.refresh_from_db()
    assert (task.warmup_status, task.warmup_retry_count, reservation(task).agent_id) == ("ready", 0, a2.id)


def test_it_tells_the_agent_to_drop_dirs_the_server_no_longer_reserves(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    task = apply_pending(setup, a1)
    from tasks_app.services.runs import run_discard

    run_discard(task_id=task.id, actor="test")
    resp = a1.post("/agent/v1/heartbeat", {"warm_dirs": [{"task": task.id, "plan_hash": "x"}]})
    assert resp.json()["release"] == [task.id]
    assert not Slot.objects.filter(agent_id=a1.id, state="reserved").exists()


def test_it_counts_a_warmup_cut_short_by_a_dead_agent_as_a_failed_attempt(setup, client):
    pool, token, ws = setup
    a1 = FakeAgent(client, token, "a1")
    task = apply_pending(setup, a1)
    agent_set_offline(agent_id=a1.id, reason="test")
    a2 = FakeAgent(client, token, "a2")
    assert a2.claim()["kind"] == "warmup"
    agent_set_offline(agent_id=a2.id, reason="test")
    task.refresh_from_db()
    assert (task.warmup_status, task.warmup_retry_count) == ("none", 1)
    assert "went offline" in task.warmup_message


def test_it_expires_the_lease_of_a_job_the_agent_never_reports(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    task = run_create(workspace=setup[2], operation="plan", actor="test")
    lost = a1.claim()  # imagine this answer never reached the agent
    a1.post("/agent/v1/heartbeat", {"running_jobs": []})
    Job.objects.filter(id=lost["id"]).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    from tasks_app.tasks import sweep

    assert sweep()["leases"] == [lost["id"]]
    task.refresh_from_db()
    assert task.status == "plan_queued", "back in the queue, waiting for an agent"
    again = a1.claim()
    assert again["id"] == lost["id"] and again["fence"] == lost["fence"] + 1
    task.refresh_from_db()
    assert task.status == "planning"


def test_it_hands_an_unacknowledged_apply_to_another_agent_and_fences_the_first(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    task = apply_pending(setup, a1)
    run_confirm(task_id=task.id, actor="test")
    first = a1.claim()  # taken on a1's behalf, but the answer never reaches a1
    task.refresh_from_db()
    assert task.status == "apply_queued", "not applying until the agent acknowledges"
    a2 = FakeAgent(client, setup[1], "a2")
    for _ in range(2):  # a1's heartbeats do not report it: a1 does not have it
        assert a1.post("/agent/v1/heartbeat", {"running_jobs": []}).status_code == 200
    second = a2.claim()
    assert second["id"] == first["id"] and second["kind"] == "apply"
    assert "the apply had not started" in second["cold_reason"]
    assert a1.ack(first).status_code == 409
    assert a2.ack(second).status_code == 200
    task.refresh_from_db()
    assert task.status == "applying"
    assert Job.objects.filter(task=task, kind="apply").count() == 1


def test_it_revokes_the_state_credential_of_an_apply_handed_to_another_agent(setup, client):
    """The agent acknowledges in the background and starts terraform at once; what keeps a
    superseded agent from applying is that `terraform apply` must first lock the state, and
    the re-queue revoked the credential it locks with."""
    a1 = FakeAgent(client, setup[1], "a1")
    task = apply_pending(setup, a1)
    run_confirm(task_id=task.id, actor="test")
    first = a1.claim()
    lock_url = f"/api/v1/workspaces/{task.workspace_id}/state/lock"
    password = first["state_backend"]["password"]
    auth = "Basic " + base64.b64encode(f"job-{first['id']}:{password}".encode()).decode()
    lock = {"ID": "lock-1", "Operation": "OperationTypeApply", "Who": "a1"}
    body = json.dumps(lock)
    assert client.generic("LOCK", lock_url, body, content_type="application/json", HTTP_AUTHORIZATION=auth).status_code == 200
    assert client.generic("UNLOCK", lock_url, body, content_type="application/json", HTTP_AUTHORIZATION=auth).status_code == 200

    for _ in range(2):  # a1's heartbeats do not report it: the apply goes back to the queue
        assert a1.post("/agent/v1/heartbeat", {"running_jobs": []}).status_code == 200
    resp = client.generic("LOCK", lock_url, json.dumps(lock), content_type="application/json", HTTP_AUTHORIZATION=auth)
    assert resp.status_code == 401
    task.refresh_from_db()
    assert task.status == "apply_queued"
