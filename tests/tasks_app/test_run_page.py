"""The run page: terraform's colours rendered (and escaped), secrets masked even when colour
codes cut through them, the plan's attribute diffs with sensitive values masked, and the
phase timeline with who ran each phase."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from agents_app.agent.jobs import SENSITIVE, UNKNOWN, attribute_diff, plan_summary
from tasks_app.models import LogChunk, Plan, Task, Variable
from tasks_app.selectors import run_log_read
from tasks_app.services.runs import run_create
from tests.agents_app.fakes import FakeAgent

pytestmark = pytest.mark.django_db(transaction=True)


def page_of(user, task: Task) -> str:
    client = Client()
    client.force_login(user)
    response = client.get(f"/runs/{task.id}/")
    assert response.status_code == 200
    return response.content.decode()


def test_it_renders_terraform_colours_and_escapes_the_rest(setup, client, alice):
    _, token, ws = setup
    agent = FakeAgent(client, token, "a1")
    task = run_create(workspace=ws, operation="plan", actor="test")
    job = agent.claim()
    text = "\x1b[0m\x1b[1mPlan:\x1b[0m 1 to add <script>alert(1)</script>\n\x1b[32m+\x1b[0m create\n"
    agent.post(f"/agent/v1/jobs/{job['id']}/logs", {"seq": 1, "text": text}, fence=job["fence"])

    html = page_of(alice, task)
    assert '<span class="ansi1">Plan:</span> 1 to add &lt;script&gt;alert(1)&lt;/script&gt;' in html
    assert '<span class="ansi32">+</span> create' in html
    assert "<script>alert(1)" not in html
    assert f'ws-connect="/ws/runs/{task.id}/?offset={len(text.encode())}"' in html
    # Text clients get the log without the codes; offsets still count the stored bytes.
    assert run_log_read(task_id=task.id) == ("Plan: 1 to add <script>alert(1)</script>\n+ create\n", len(text.encode()))
    download = Client()
    download.force_login(alice)
    body = b"".join(download.get(f"/runs/{task.id}/log.txt").streaming_content).decode()
    assert "\x1b" not in body and "Plan: 1 to add" in body


def test_it_masks_a_secret_that_colour_codes_cut_in_two(setup, client, alice):
    _, token, ws = setup
    var = Variable(workspace=ws, key="db_password", sensitive=True)
    var.set_value("hunter2")
    var.save()
    agent = FakeAgent(client, token, "a1")
    task = run_create(workspace=ws, operation="plan", actor="test")
    job = agent.claim()
    text = "password = \x1b[1mhun\x1b[0mter2\n\x1b[32mok\x1b[0m hunter2\n"
    agent.post(f"/agent/v1/jobs/{job['id']}/logs", {"seq": 1, "text": text}, fence=job["fence"])

    stored = LogChunk.objects.get(job_id=job["id"]).text
    assert stored == "password = ***\nok ***\n"  # its colours dropped with the secret
    for shown in (page_of(alice, task), run_log_read(task_id=task.id)[0]):
        assert "hunter2" not in shown and "ter2" not in shown


def test_it_masks_sensitive_attributes_in_the_plan_diff():
    show = {"resource_changes": [{
        "address": "aws_db_instance.main",
        "change": {
            "actions": ["update"],
            "before": {"name": "db", "password": "old-secret", "tags": {"env": "dev", "token": "t0ps3cret"}, "port": 5432},
            "after": {"name": "db2", "password": "new-secret", "tags": {"env": "prod", "token": "t0ps3cret2"}, "port": 5432},
            "after_unknown": {"arn": True},
            "before_sensitive": {"password": True, "tags": {"token": True}},
            "after_sensitive": {"password": True, "tags": {"token": True}},
        },
    }, {
        "address": "random_password.p",
        "change": {"actions": ["create"], "before": None, "after": {"length": 16}, "after_unknown": {"result": True},
                   "before_sensitive": False, "after_sensitive": {"result": True}},
    }]}
    summary = plan_summary(show)
    dumped = json.dumps(summary)
    for secret in ("old-secret", "new-secret", "t0ps3cret"):
        assert secret not in dumped
    rows = {r["name"]: r for r in summary["resources"][0]["diff"]}
    assert rows["name"] == {"name": "name", "before": '"db"', "after": '"db2"'}
    assert rows["password"] == {"name": "password", "before": SENSITIVE, "after": SENSITIVE}
    assert rows["tags"]["after"] == '{"env": "prod", "token": "(sensitive value)"}'
    assert rows["arn"] == {"name": "arn", "before": "", "after": UNKNOWN}
    assert "port" not in rows  # unchanged
    assert attribute_diff(show["resource_changes"][1]["change"]) == [
        {"name": "length", "before": "", "after": "16"}, {"name": "result", "before": "", "after": UNKNOWN}]


def test_it_shows_the_plan_grouped_by_action_with_expandable_diffs(setup, alice):
    _, _, ws = setup
    task = run_create(workspace=ws, operation="plan", actor="test")
    summary = {"add": 1, "change": 1, "destroy": 1, "resources": [
        {"address": "terraform_data.new", "actions": ["create"], "diff": [{"name": "input", "before": "", "after": '"x"'}]},
        {"address": "terraform_data.old", "actions": ["delete"], "diff": []},
        {"address": "aws_db_instance.main", "actions": ["update"],
         "diff": [{"name": "password", "before": SENSITIVE, "after": SENSITIVE}]},
    ]}
    Plan.objects.create(task=task, encrypted_data=b"", sha256="0" * 64, size=0, summary=summary)
    html = page_of(alice, task)
    assert html.index("1 to add") < html.index("1 to change") < html.index("1 to destroy")
    assert "<details><summary><code>aws_db_instance.main</code></summary>" in html
    assert "<code>(sensitive value)</code>" in html
    assert "<code>terraform_data.old</code>" in html  # no diff: no <details>


def test_it_shows_each_phase_with_its_duration_agent_and_slot(setup, client, alice):
    _, token, ws = setup
    agent = FakeAgent(client, token, "runner-7")
    task = run_create(workspace=ws, operation="plan", actor="test")
    job = agent.claim()
    html = page_of(alice, task)
    timeline = html[html.index('id="run-timeline"'):html.index('id="run-plan"')]
    assert timeline.index("plan_queued") < timeline.index("planning")
    assert f"plan job {job['id']}" in timeline and "agent <strong>runner-7</strong>" in timeline
    assert "slot 0" in timeline
    assert "so far" in timeline  # the current phase's duration is still running


def test_the_jobs_table_says_how_long_each_terraform_command_took():
    from tasks_app.templatetags.ui import command_times

    commands = [
        {"command": "init", "started_at": 0.0, "ended_at": 125.0, "exit_code": 0},
        {"command": "plan", "started_at": 125.0, "ended_at": 126.4, "exit_code": 2},  # 2: changes
        {"command": "show", "started_at": 126.4, "ended_at": 126.447, "exit_code": 1},
        {"command": "apply"},  # unreadable: left out
    ]
    assert command_times(commands) == "init 125s · plan 1.4 s · show 47 ms (exit 1)"  # as the timeline says
    assert command_times([]) == "" and command_times(None) == ""
