"""Fewer round trips per job: a plan job's configuration comes inside its claim
answer, and a job's last log text and its plan travel with its finish report, stored in one
transaction. Driven through the agent HTTP endpoints (Django test client), and the agent's
LogStream against a recording client."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile

import pytest

from agents_app.agent.logstream import LogStream
from agents_app.redaction import Redactor
from iacplatform.unit_of_work import unit_of_work
from tasks_app.dispatch import job_output, job_payloads
from tasks_app.dispatch.models import Job
from tasks_app.models import LogChunk, Plan, Task
from tasks_app.selectors import run_log_read
from tasks_app.services.runs import run_confirm, run_create
from tests.agents_app.fakes import PLAN, FakeAgent, apply_pending

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "hunter2-secret"


def _plan(data: bytes = PLAN, sha256: str | None = None) -> dict:
    return {"plan_b64": base64.b64encode(data).decode(), "sha256": sha256 or hashlib.sha256(data).hexdigest(),
            "summary": {"add": 1, "change": 0, "destroy": 0, "resources": []}, "has_changes": True}


def test_it_sends_a_plans_small_configuration_inside_the_claim_answer(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    task = run_create(workspace=setup[2], operation="plan_and_apply", actor="test")
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as claim:
        job = a1.claim()
    # Read with the run it belongs to, in the same query (not one more on the plan's way).
    [read] = [q["sql"] for q in claim.captured_queries if '"archive"' in q["sql"]]
    assert "FOR NO KEY UPDATE" in read
    archive = base64.b64decode(job["configuration_b64"])
    assert hashlib.sha256(archive).hexdigest() == job["configuration_sha256"]
    assert bytes(task.configuration_version.archive) == archive
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert "main.tf" in tar.getnames()


def test_it_leaves_large_configurations_and_applies_to_be_fetched(setup, client, monkeypatch):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    a1 = FakeAgent(client, setup[1], "a1")
    task = apply_pending(setup, a1)
    with CaptureQueriesContext(connection) as confirm:
        run_confirm(task_id=task.id, actor="test")
    assert not [q["sql"] for q in confirm.captured_queries if '"archive"' in q["sql"]]  # not even read
    apply = a1.claim()
    assert apply["kind"] == "apply" and apply["configuration_b64"] == ""  # Confirm's hot path reads no archive
    monkeypatch.setattr(job_payloads, "INLINE_CONFIGURATION_BYTES", 10)
    run_create(workspace=setup[2], operation="plan", actor="test")
    a2 = FakeAgent(client, setup[1], "a2")
    plan = a2.claim()
    assert plan["kind"] == "plan" and plan["configuration_b64"] == ""
    resp = client.get(f"/agent/v1/jobs/{plan['id']}/configuration", HTTP_AUTHORIZATION=f"Bearer {a2.token}",
                      HTTP_X_JOB_FENCE=str(plan["fence"]))
    assert hashlib.sha256(resp.content).hexdigest() == plan["configuration_sha256"]


def test_it_stores_the_plan_and_the_last_log_text_with_the_result(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    task = run_create(workspace=setup[2], operation="plan_and_apply", actor="test")
    job = a1.claim()
    a1.post(f"/agent/v1/jobs/{job['id']}/logs", {"seq": 1, "text": "$ terraform plan\n"}, fence=job["fence"])
    body = {"kept_dir": True, "log": {"seq": 2, "text": "Plan: 1 to add\n"}, "plan": _plan()}
    resp = a1.finish(job, **body)
    assert resp.status_code == 200 and resp.json() == {"keep_dir": True}
    task.refresh_from_db()
    assert task.status == "apply_pending" and task.plan_hash == hashlib.sha256(PLAN).hexdigest()
    assert Plan.objects.get(task=task).data == PLAN
    assert run_log_read(task_id=task.id)[0] == "$ terraform plan\nPlan: 1 to add\n"
    # The answer was lost and the agent retries: the job moved on, nothing is stored twice.
    assert a1.finish(job, **body).status_code == 409
    assert LogChunk.objects.filter(job_id=job["id"]).count() == 2
    assert run_log_read(task_id=task.id)[0] == "$ terraform plan\nPlan: 1 to add\n"


def test_a_result_carrying_a_log_chunk_already_stored_stores_it_once(setup, client):
    """A result whose last text has a seq a log post already stored (a post that landed while
    the agent thought it lost) keeps the stored chunk; the rest of the result counts."""
    a1 = FakeAgent(client, setup[1], "a1")
    task = run_create(workspace=setup[2], operation="plan_and_apply", actor="test")
    job = a1.claim()
    a1.post(f"/agent/v1/jobs/{job['id']}/logs", {"seq": 1, "text": "Plan: 1 to add\n"}, fence=job["fence"])
    resp = a1.finish(job, kept_dir=True, log={"seq": 1, "text": "Plan: 1 to add\n"}, plan=_plan())
    assert resp.status_code == 200
    task.refresh_from_db()
    assert task.status == "apply_pending"
    assert LogChunk.objects.filter(job_id=job["id"]).count() == 1
    assert run_log_read(task_id=task.id)[0] == "Plan: 1 to add\n"


def test_it_refuses_a_result_whose_plan_does_not_match_its_hash_and_changes_nothing(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    task = run_create(workspace=setup[2], operation="plan_and_apply", actor="test")
    job = a1.claim()
    resp = a1.finish(job, kept_dir=True, log={"seq": 1, "text": "Plan: 1 to add\n"}, plan=_plan(sha256="0" * 64))
    assert resp.status_code == 400 and "upload corrupted" in resp.json()["detail"]
    resp = a1.finish(job, plan={**_plan(), "plan_b64": "not base64!"})
    assert resp.status_code == 400 and "plan.plan_b64" in resp.json()["detail"]
    task.refresh_from_db()
    assert task.status == "planning" and task.plan_hash == ""
    assert Job.objects.get(id=job["id"]).status == "running"
    assert not Plan.objects.filter(task=task).exists() and not LogChunk.objects.filter(task=task).exists()


def test_it_fences_a_result_with_a_plan_from_an_agent_that_lost_the_job(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    task = run_create(workspace=setup[2], operation="plan_and_apply", actor="test")
    job = a1.claim()
    resp = a1.post(f"/agent/v1/jobs/{job['id']}/finish", {"outcome": "succeeded", "plan": _plan(),
                                                           "log": {"seq": 1, "text": "x\n"}}, fence=job["fence"] + 1)
    assert resp.status_code == 409
    task.refresh_from_db()
    assert task.plan_hash == "" and not LogChunk.objects.filter(task=task).exists()


def test_a_result_from_an_agent_that_lost_the_job_learns_nothing_of_its_plan_check(setup, client):
    """Whose job it is comes before the plan's sha256 check, for a small plan (hashed under
    the result's locks) as for a large one (hashed before them)."""
    a1 = FakeAgent(client, setup[1], "a1")
    run_create(workspace=setup[2], operation="plan_and_apply", actor="test")
    job = a1.claim()
    resp = a1.post(f"/agent/v1/jobs/{job['id']}/finish", {"outcome": "succeeded", "plan": _plan(sha256="0" * 64)},
                   fence=job["fence"] + 1)
    assert resp.status_code == 409 and "sha256" not in resp.json()["detail"]


def test_a_plan_stored_again_for_its_run_replaces_the_first(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    task = run_create(workspace=setup[2], operation="plan_and_apply", actor="test")
    claimed = Job.objects.get(id=a1.claim()["id"])
    with unit_of_work() as uow:
        first = job_output.job_store_plan(claimed, uow=uow, data=b"first", sha256="a" * 64, summary={"add": 1},
                                          has_changes=True)
    with unit_of_work() as uow:
        second = job_output.job_store_plan(claimed, uow=uow, data=b"second", sha256="b" * 64, summary={"add": 2},
                                           has_changes=False)
    assert second.pk == first.pk
    stored = Plan.objects.get(task=task)
    assert (stored.data, stored.sha256, stored.summary) == (b"second", "b" * 64, {"add": 2})
    task.refresh_from_db()
    assert task.plan_hash == "b" * 64 and task.has_changes is False


def test_it_redacts_the_last_log_text_sent_with_the_result(setup, client):
    from tasks_app.models import Variable

    var = Variable(workspace=setup[2], key="db_password", sensitive=True)
    var.set_value(SECRET)
    var.save()
    a1 = FakeAgent(client, setup[1], "a1")
    task = run_create(workspace=setup[2], operation="plan", actor="test")
    job = a1.claim()
    assert a1.finish(job, "failed", error="boom", log={"seq": 1, "text": f"password={SECRET}\n"}).status_code == 200
    assert run_log_read(task_id=task.id)[0] == "password=***\n"
    assert Task.objects.get(id=task.id).status == "errored"


class RecordingClient:
    def __init__(self) -> None:
        self.posts: list[dict] = []

    def call(self, method: str, path: str, *, json=None, fence=None, **kw):
        self.posts.append(json)


def test_it_hands_back_the_text_not_posted_yet_in_order_and_masked():
    client = RecordingClient()
    stream = LogStream(client, 7, 1, redactor=Redactor([SECRET]))  # type: ignore[arg-type]
    stream.write("$ terraform apply\n")
    stream._thread.join(0.2)  # let the sender post it
    stream.write(f"password={SECRET[:4]}")
    stream.write(f"{SECRET[4:]}\nApply complete!\n")
    rest = stream.rest()
    posted = "".join(p.get("text", "") for p in client.posts)
    assert rest is not None and rest.seq == len(client.posts) + 1
    assert posted + rest.text == "$ terraform apply\npassword=***\nApply complete!\n"
    # Written after (the agent's own error line) and asked again: the same post, grown.
    stream.write("agent error\n")
    again = stream.rest()
    assert again is not None and again.seq == rest.seq and again.text == rest.text + "agent error\n"
    assert "".join(p.get("text", "") for p in client.posts) == posted  # nothing more was posted


def test_it_hands_back_nothing_when_everything_was_posted():
    client = RecordingClient()
    stream = LogStream(client, 7, 1)  # type: ignore[arg-type]
    assert stream.rest() is None and client.posts == []


def _wait_for(predicate, timeout: float = 5) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_it_posts_the_first_text_at_once_and_gathers_a_burst_after_it_into_one_post(monkeypatch):
    import time

    from agents_app.agent import logstream
    from agents_app.protocol import LogEvents

    client = RecordingClient()
    stream = LogStream(client, 7, 1)  # type: ignore[arg-type]
    stream.write("$ terraform plan\n")
    _wait_for(lambda: len(client.posts) == 1)
    for line in ("a\n", "b\n", "c\n"):
        stream.write(line)
        time.sleep(0.02)
    _wait_for(lambda: len(client.posts) == 2, timeout=logstream.LINGER_SECONDS + 5)
    assert [p["text"] for p in client.posts] == ["$ terraform plan\n", "a\nb\nc\n"]
    # With a linger far longer than the waits below: an event goes at once, and so does the
    # first text after it (the apply's first line), and the rest at the end.
    monkeypatch.setattr(logstream, "LINGER_SECONDS", 60)
    stream.write("d\n")
    stream.event(LogEvents(ack=True))
    stream.write("terraform_data.x: Creating...\n")
    _wait_for(lambda: len(client.posts) == 5)
    assert client.posts[2]["text"] == "d\n" and client.posts[3]["events"] == {"ack": True}
    assert client.posts[4]["text"] == "terraform_data.x: Creating...\n"
    stream.write("Apply complete!\n")
    started = time.monotonic()
    rest = stream.rest()
    assert time.monotonic() - started < 5
    assert rest is not None and rest.text == "Apply complete!\n" and rest.seq == 6


def test_a_held_event_gathers_the_text_written_during_its_hold_into_one_post():
    import time

    from agents_app.protocol import LogEvents

    client = RecordingClient()
    stream = LogStream(client, 7, 1)  # type: ignore[arg-type]
    stream.write("local plan.out restored\n")  # text before the event stays before it
    _wait_for(lambda: len(client.posts) == 1)
    started = time.monotonic()
    stream.event(LogEvents(ack=True, apply_started_at=1.0), hold=0.4)
    stream.write("terraform_data.x: Creating...\n")
    stream.write("terraform_data.x: Creation complete\n")
    _wait_for(lambda: len(client.posts) == 2)
    assert time.monotonic() - started >= 0.4  # the first line did not end the hold
    assert client.posts[0] == {"seq": 1, "text": "local plan.out restored\n"}
    assert client.posts[1] == {"seq": 2, "text": "terraform_data.x: Creating...\nterraform_data.x: Creation complete\n",
                               "events": {"ack": True, "apply_started_at": 1.0}}
    stream.write("Apply complete!\n")  # after the hold: as ever (at once after an event)
    _wait_for(lambda: len(client.posts) == 3)
    assert client.posts[2]["text"] == "Apply complete!\n" and "events" not in client.posts[2]


def test_the_apply_start_goes_with_terraforms_first_line_at_once_and_what_follows_gathers():
    """The warm apply's start (until_text): the first line is not held back (a fixed hold cost
    up to 40 ms of the person's wait for it); the event travels with it, and later lines
    gather after it as after any text post."""
    import time

    from agents_app.protocol import LogEvents

    client = RecordingClient()
    stream = LogStream(client, 7, 1)  # type: ignore[arg-type]
    stream.event(LogEvents(ack=True, apply_started_at=1.0), hold=30, until_text=True)
    time.sleep(0.1)
    assert client.posts == []  # nothing to show yet: the event waits for the first line
    written = time.monotonic()
    stream.write("terraform_data.x: Destroying...\n")
    _wait_for(lambda: len(client.posts) == 1)
    assert time.monotonic() - written < 5  # not the 30 s hold
    assert client.posts[0] == {"seq": 1, "text": "terraform_data.x: Destroying...\n",
                               "events": {"ack": True, "apply_started_at": 1.0}}
    stream.write("terraform_data.x: Creating...\n")
    stream.write("terraform_data.x: Creation complete\n")
    _wait_for(lambda: len(client.posts) == 2)
    assert client.posts[1]["text"] == "terraform_data.x: Creating...\nterraform_data.x: Creation complete\n"
    # A short apply whose first line comes with its end: one finish report, as before.
    short = LogStream(client, 8, 1)  # type: ignore[arg-type]
    short.event(LogEvents(ack=True), hold=30, until_text=True)
    rest = short.rest()
    assert rest is not None and rest.events == LogEvents(ack=True) and len(client.posts) == 2


def test_a_job_that_ends_while_an_event_is_held_hands_it_back_with_its_text_for_the_finish():
    from agents_app.protocol import LogEvents

    client = RecordingClient()
    stream = LogStream(client, 7, 1)  # type: ignore[arg-type]
    stream.event(LogEvents(ack=True, apply_started_at=2.0), hold=60)
    stream.write("Apply complete!\n")
    rest = stream.rest()
    assert client.posts == []  # a short apply: nothing posted on its own
    assert rest is not None and rest.seq == 1 and rest.text == "Apply complete!\n"
    assert rest.events == LogEvents(ack=True, apply_started_at=2.0)
    # With no text at all, the event still comes back.
    quiet = LogStream(client, 8, 1)  # type: ignore[arg-type]
    quiet.event(LogEvents(ack=True), hold=60)
    rest = quiet.rest()
    assert rest is not None and rest.text == "" and rest.events == LogEvents(ack=True) and client.posts == []


def test_a_short_apply_reports_its_start_log_and_result_in_one_request(setup, client):
    import time

    from tasks_app.models import TaskEvent

    a1 = FakeAgent(client, setup[1], "a1")
    task = apply_pending(setup, a1)
    run_confirm(task_id=task.id, actor="test")
    apply = a1.claim()
    started = time.time()
    log = {"seq": 1, "text": "Apply complete! Resources: 1 added\n",
           "events": {"ack": True, "apply_started_at": started, "apply_path": "fast", "apply_path_reason": "kept"}}
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as result:
        assert a1.finish(apply, log=log).status_code == 200
    sql = [q["sql"] for q in result.captured_queries]
    # One UPDATE of the run for its log, its start, applying, applied and the warm dir's release,
    # one of the job for its acknowledgement and its end.
    assert len([q for q in sql if q.startswith('UPDATE "tasks_app_task"')]) == 1
    assert len([q for q in sql if q.startswith('UPDATE "tasks_app_job"')]) == 1
    # The sensitive values for the log's redaction come with the locked run, not in a query of their own.
    assert not [q for q in sql if q.startswith('SELECT "tasks_app_variable"')]
    task.refresh_from_db()
    assert task.status == "applied" and task.apply_path == "fast" and task.warmup_status == "none"
    assert task.finished_at is not None and task.log_size == len(log["text"])
    assert abs(task.apply_started_at.timestamp() - started) < 0.01 and task.first_apply_log_at is not None
    assert Job.objects.get(id=apply["id"]).acked_at is not None
    moves = list(TaskEvent.objects.filter(task=task).order_by("id").values_list("to_status", flat=True))
    assert moves[-3:] == ["apply_queued", "applying", "applied"]
    assert run_log_read(task_id=task.id)[0].endswith("Apply complete! Resources: 1 added\n")


def test_it_stores_the_terraform_commands_the_agent_timed_and_the_run_page_shows_them(setup, client, alice):
    from django.test import Client

    a1 = FakeAgent(client, setup[1], "a1")
    task = run_create(workspace=setup[2], operation="plan_and_apply", actor="test")
    job = a1.claim()
    commands = [{"command": "plan", "started_at": 100.0, "ended_at": 100.093, "exit_code": 2},
                {"command": "show", "started_at": 100.1, "ended_at": 101.6, "exit_code": 0}]
    assert a1.finish(job, kept_dir=True, plan=_plan(), commands=commands).status_code == 200
    assert Job.objects.get(id=job["id"]).commands == commands
    page = Client()  # alice is a site admin
    page.force_login(alice)
    html = page.get(f"/runs/{task.id}/").content.decode()
    assert "plan 93 ms · show 1.5 s" in html


def test_it_refuses_a_command_that_ends_before_it_starts_and_changes_nothing(setup, client):
    a1 = FakeAgent(client, setup[1], "a1")
    task = run_create(workspace=setup[2], operation="plan_and_apply", actor="test")
    job = a1.claim()
    bad = [{"command": "plan", "started_at": 100.0, "ended_at": 99.0, "exit_code": 0}]
    resp = a1.finish(job, kept_dir=True, plan=_plan(), commands=bad)
    assert resp.status_code == 400 and "ended_at is before started_at" in resp.content.decode()
    task.refresh_from_db()
    assert task.status == "planning" and not Plan.objects.filter(task=task).exists()


def test_a_hold_gathers_the_first_text_into_one_post_and_a_short_job_sends_it_with_its_result():
    """A plan's start: its first text waits (LogStream.hold) with what follows; a plan that
    ends within the hold posts no log at all (its log goes inside the finish report), a
    longer one posts it once the hold is over."""
    import time

    from agents_app.protocol import LogEvents

    client = RecordingClient()
    stream = LogStream(client, 7, 1)  # type: ignore[arg-type]
    stream.hold(60)
    stream.write("$ terraform plan\n")
    stream.write("Plan: 1 to add\n")
    rest = stream.rest()
    assert client.posts == [], "the held text was posted"
    assert rest is not None and rest.seq == 1 and rest.text == "$ terraform plan\nPlan: 1 to add\n"
    assert rest.events == LogEvents()

    longer = RecordingClient()
    stream = LogStream(longer, 8, 1)  # type: ignore[arg-type]
    started = time.monotonic()
    stream.hold(0.3)
    stream.write("$ terraform init\n")
    _wait_for(lambda: len(longer.posts) == 1)
    assert time.monotonic() - started >= 0.3
    assert longer.posts == [{"seq": 1, "text": "$ terraform init\n"}]
    assert stream.rest() is None


def test_an_empty_hold_posts_nothing():
    import time

    client = RecordingClient()
    stream = LogStream(client, 7, 1)  # type: ignore[arg-type]
    stream.hold(0.05)
    time.sleep(0.3)
    stream.close()
    assert client.posts == []


def test_a_plans_result_writes_its_run_row_in_one_update(setup, client):
    """The log and the plan a result carries, the run's move to apply_pending and its warm
    dir's reservation all set fields of the run (saved by the result's unit of work): one UPDATE for
    all four."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    a1 = FakeAgent(client, setup[1], "a1")
    task = run_create(workspace=setup[2], operation="plan_and_apply", actor="test")
    job = a1.claim()
    with CaptureQueriesContext(connection) as result:
        assert a1.finish(job, kept_dir=True, log={"seq": 1, "text": "Plan: 1 to add\n"}, plan=_plan()).status_code == 200
    updates = [q["sql"] for q in result.captured_queries if q["sql"].startswith('UPDATE "tasks_app_task"')]
    assert len(updates) == 1, updates
    task.refresh_from_db()
    assert (task.status, task.log_size, task.plan_hash, task.has_changes, task.warmup_status) == (
        "apply_pending", len("Plan: 1 to add\n"), hashlib.sha256(PLAN).hexdigest(), True, "ready")
