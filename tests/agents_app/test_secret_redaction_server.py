"""The server redacts secrets again, whatever the agent sends: a sensitive value (as it is,
JSON-escaped) or a job credential in a failing job's error shows in none of the job's error,
the run's message, the events, the API and the run page; the job payload tells the agent
which values to redact; the run shows how the agent ran terraform."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from tasks_app.dispatch.models import DispatchEvent, Job
from tasks_app.models import Task, TaskEvent, Variable
from tasks_app.services.runs import run_create
from tests.agents_app.fakes import FakeAgent

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = 'hunter2-"db"\\pw'


def sensitive(workspace, key: str, value: str) -> None:
    var = Variable(workspace=workspace, key=key, sensitive=True)
    var.set_value(value)
    var.save()


def test_it_redacts_a_sensitive_value_in_a_failing_runs_error_everywhere(setup, client, alice):
    _, token, ws = setup
    sensitive(ws, "db_password", SECRET)
    agent = FakeAgent(client, token, "a1")
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    job = agent.claim()
    assert job["sensitive_values"] == [SECRET], "the agent must know what to redact"
    credential = job["state_backend"]["password"]
    error = (f"terraform plan exited with 1: local-exec: echo {SECRET}\n"
             f'{{"password": {json.dumps(SECRET)}}}\nTF_HTTP_PASSWORD={credential}')
    resp = agent.finish(job, "failed", error=error, sandbox="bwrap")
    assert resp.status_code == 200, resp.content

    task.refresh_from_db()
    stored = Job.objects.get(id=job["id"])
    assert task.status == "errored"
    texts = {
        "job error": stored.error,
        "run message": task.message,
        "run events": " ".join(TaskEvent.objects.filter(task=task).values_list("message", flat=True)),
        "dispatch events": " ".join(DispatchEvent.objects.filter(task=task).values_list("message", flat=True)),
    }
    viewer = Client()
    viewer.force_login(alice)
    api = viewer.get(f"/api/v1/runs/{task.id}/")
    page = viewer.get(f"/runs/{task.id}/")
    assert api.status_code == 200 and page.status_code == 200
    texts["API"] = api.content.decode()
    texts["run page"] = page.content.decode()
    for where, text in texts.items():
        assert "hunter2" not in text, f"the secret shows in the {where}"
        assert credential not in text, f"the job credential shows in the {where}"
    assert stored.error.startswith("terraform plan exited with 1: local-exec: echo ***")
    assert "echo ***" in task.message

    assert stored.sandbox == "bwrap"
    assert api.json()["sandbox"] == {"plan": "bwrap"}
    assert '<td class="job-sandbox">bwrap</td>' in texts["run page"]


def test_it_redacts_json_escaped_values_and_platform_tokens_in_log_chunks(setup, client):
    from tasks_app.models import LogChunk

    _, token, ws = setup
    sensitive(ws, "db_password", SECRET)
    agent = FakeAgent(client, token, "a1")
    run_create(workspace=ws, operation="plan", actor="test")
    job = agent.claim()
    text = f'"password": {json.dumps(SECRET)}\nTF_HTTP_PASSWORD={job["state_backend"]["password"]}\n'
    agent.post(f"/agent/v1/jobs/{job['id']}/logs", {"seq": 1, "text": text}, fence=job["fence"])
    assert LogChunk.objects.get(job_id=job["id"]).text == '"password": "***"\nTF_HTTP_PASSWORD=***\n'


def test_it_accepts_a_result_from_an_agent_that_does_not_report_its_sandbox(setup, client):
    _, token, ws = setup
    agent = FakeAgent(client, token, "a1")
    task = run_create(workspace=ws, operation="plan", actor="test")
    job = agent.claim()
    assert agent.finish(job, "failed", error="boom").status_code == 200
    assert Job.objects.get(id=job["id"]).sandbox == ""
    assert Task.objects.get(id=task.id).message == "boom"


def test_it_masks_a_jobs_log_with_the_values_it_was_given_even_after_they_change(setup, client):
    """A secret rotated (or deleted) while the job runs: terraform still has the value its
    payload carried, and may print it; the server masks that value, and the new one too
    only once a job is given it."""
    from tasks_app.models import LogChunk
    from tasks_app.workflows.models import VariableSet, VariableSetVariable

    _, token, ws = setup
    sensitive(ws, "db_password", SECRET)
    global_set = VariableSet.objects.create(name="shared", scope="global")
    set_var = VariableSetVariable(variable_set=global_set, key="api_key", category="env", sensitive=True)
    set_var.set_value("set-secret-1")
    set_var.save()
    agent = FakeAgent(client, token, "a1")
    run_create(workspace=ws, operation="plan", actor="test")
    job = agent.claim()
    assert sorted(job["sensitive_values"]) == sorted([SECRET, "set-secret-1"])

    var = Variable.objects.get(workspace=ws, key="db_password")
    var.set_value("rotated-value")
    var.save()
    set_var.delete()
    text = f"old {SECRET} set set-secret-1 new rotated-value\n"
    agent.post(f"/agent/v1/jobs/{job['id']}/logs", {"seq": 1, "text": text}, fence=job["fence"])
    assert LogChunk.objects.get(job_id=job["id"]).text == "old *** set *** new rotated-value\n"


def test_a_jobs_mask_sealed_with_a_dropped_key_falls_back_to_the_workspaces_values(setup, client):
    """A key rotated (and the old one dropped) while a job runs: its stored mask no longer
    decrypts; the server masks with the workspace's current values instead of failing."""
    from tasks_app.models import LogChunk

    _, token, ws = setup
    sensitive(ws, "db_password", SECRET)
    agent = FakeAgent(client, token, "a1")
    run_create(workspace=ws, operation="plan", actor="test")
    job = agent.claim()
    Job.objects.filter(id=job["id"]).update(mask_ciphertexts=[b"gAAAAA-not-a-token-of-any-key"])
    resp = agent.post(f"/agent/v1/jobs/{job['id']}/logs", {"seq": 1, "text": f"pw {SECRET}\n"}, fence=job["fence"])
    assert resp.status_code == 200, resp.content
    assert LogChunk.objects.get(job_id=job["id"]).text == "pw ***\n"
