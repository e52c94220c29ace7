"""The server-rendered pages and the admin, as a logged-in user sees them.

No agents run here: queued jobs stay queued, and runs are put into apply_pending by
writing their rows directly, as a finished plan would leave them.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from html import unescape

import pytest
from django.apps import apps
from django.contrib import admin
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agents_app.models import Agent, AgentPool
from agents_app.protocol import JobKind, JobStatus, SlotState
from iacplatform import crypto
from tasks_app.dispatch.models import Job, Slot
from tasks_app.models import Plan, StateVersion, Task, TaskEvent, Variable, Workspace
from tasks_app.states import ApplyPath, Operation, RunStatus, WarmupStatus
from tests.factories import make_agent, make_workspace

SECRET = "s3cr3t-never-shown-8d1f"


@pytest.fixture
def client_alice(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def page(response) -> str:
    """The page text with HTML entities decoded, as a user reads it."""
    return unescape(response.content.decode())


def make_apply_pending(workspace: Workspace, *, agent: Agent | None = None) -> Task:
    """A plan_and_apply run whose plan just finished with changes; warm on `agent` if given."""
    plan_bytes = b"fake plan.out"
    sha = hashlib.sha256(plan_bytes).hexdigest()
    task = Task.objects.create(
        workspace=workspace,
        configuration_version=workspace.configuration_versions.first(),
        operation=Operation.PLAN_AND_APPLY,
        status=RunStatus.APPLY_PENDING,
        plan_hash=sha,
        has_changes=True,
        base_state_serial=None,  # no state yet, and none written since: the plan is fresh
    )
    for frm, to in [
        ("", RunStatus.PENDING),
        (RunStatus.PENDING, RunStatus.PLANNING),
        (RunStatus.PLANNING, RunStatus.APPLY_PENDING),
    ]:
        TaskEvent.objects.create(task=task, from_status=frm, to_status=to, actor="system")
    Plan.objects.create(
        task=task,
        encrypted_data=crypto.encrypt(plan_bytes),
        sha256=sha,
        size=len(plan_bytes),
        summary={
            "add": 1,
            "change": 0,
            "destroy": 0,
            "resources": [{"address": "terraform_data.demo", "actions": ["create"]}],
        },
    )
    if agent is not None:
        slot = agent.slots.order_by("index").first()
        assert slot is not None
        Slot.objects.filter(id=slot.id).update(state=SlotState.RESERVED, task=task)
        now = timezone.now()
        task.warmup_status = WarmupStatus.READY
        task.warmup_at = now
        task.warmup_expires_at = now + timedelta(minutes=30)
        task.warmup_message = f"plan dir kept on {agent.name}"
        task.save()
    return task


@pytest.fixture
def agent(pool: AgentPool) -> Agent:
    agent, _token = make_agent(pool=pool, name="agent-blue")
    return agent


# Login


def test_it_redirects_anonymous_users_to_login(client, workspace):
    for url in ["/", f"/workspaces/{workspace.id}/", "/pools/"]:
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")


def test_it_logs_in_with_a_password(client, alice):
    form = client.get("/accounts/login/")
    assert form.status_code == 200
    assert 'name="password"' in page(form)

    response = client.post("/accounts/login/", {"username": "alice", "password": "alice-password-1"}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("workspace-list")
    assert "Log out" in page(response)
    assert "alice" in page(response)


def test_it_rejects_a_wrong_password(client, alice):
    response = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert "did not match" in page(response)


def test_it_logs_out_with_the_header_button(client_alice):
    response = client_alice.post(reverse("logout"), follow=True)
    assert response.redirect_chain[-1][0].startswith("/accounts/login/")
    assert client_alice.get("/").status_code == 302


# Workspaces


def test_it_lists_workspaces_with_pool_and_latest_run(client_alice, workspace):
    task = make_apply_pending(workspace)
    text = page(client_alice.get("/"))
    assert workspace.name in text
    assert workspace.pool.name in text
    assert f"run {task.id}" in text
    assert "apply_pending" in text


def test_it_creates_a_workspace_from_the_list_page(client_alice, pool):
    response = client_alice.post("/", {"name": "new-ws", "pool": pool.id}, follow=True)
    ws = Workspace.objects.get(name="new-ws")
    assert response.redirect_chain[-1][0] == reverse("workspace-detail", args=[ws.id])
    assert "No configuration uploaded yet" in page(response)


def test_it_queues_a_plan_and_apply_from_the_workspace_page(
    client_alice, workspace, django_capture_on_commit_callbacks
):
    # The queue starts runs after commit; the test transaction never commits, so run the
    # callbacks when the request is done, before the redirect is followed.
    with django_capture_on_commit_callbacks(execute=True):
        response = client_alice.post(
            reverse("workspace-run-create", args=[workspace.id]), {"operation": Operation.PLAN_AND_APPLY}
        )
    task = Task.objects.get(workspace=workspace)
    assert response["Location"] == reverse("run-detail", args=[task.id])
    assert task.status == RunStatus.PLAN_QUEUED
    assert task.operation == Operation.PLAN_AND_APPLY
    assert Job.objects.filter(task=task, kind=JobKind.PLAN, status=JobStatus.QUEUED).count() == 1

    text = page(client_alice.get(response["Location"]))
    assert f"Run {task.id} queued" in text
    assert "plan queued" in text or "plan_queued" in text
    assert f"queued: no agent of pool '{workspace.pool.name}' is online (gives up at " in text

    text = page(client_alice.get(reverse("workspace-detail", args=[workspace.id])))
    assert f"run {task.id}" in text
    assert "Queue plan & apply" in text


def test_it_queues_a_run_with_options_from_the_workspace_page(client_alice, workspace):
    assert "Run options: destroy, refresh-only" in page(client_alice.get(reverse("workspace-detail", args=[workspace.id])))
    client_alice.post(reverse("workspace-run-create", args=[workspace.id]), {
        "operation": Operation.PLAN, "mode": "destroy", "targets": "terraform_data.a\r\n\r\nmodule.m.x[0]\n",
        "replace": "",
    })
    task = Task.objects.get(workspace=workspace)
    assert (task.plan_mode, task.plan_targets, task.plan_replace) == ("destroy", ["terraform_data.a", "module.m.x[0]"], [])

    response = client_alice.post(reverse("workspace-run-create", args=[workspace.id]),
                                 {"operation": Operation.PLAN, "targets": "-lock=false"}, follow=True)
    assert "must be a resource address" in page(response)
    assert Task.objects.filter(workspace=workspace).count() == 1


def test_it_shows_a_refused_run_as_a_message(client_alice, pool):
    empty = make_workspace(pool=pool)  # no configuration uploaded
    response = client_alice.post(
        reverse("workspace-run-create", args=[empty.id]), {"operation": Operation.PLAN}, follow=True
    )
    assert response.status_code == 200
    assert "has no configuration yet" in page(response)
    assert not Task.objects.filter(workspace=empty).exists()


def test_it_shows_variables_and_state_versions(client_alice, workspace):
    var = Variable(workspace=workspace, key="greeting")
    var.set_value("hi-there")
    var.save()
    StateVersion.objects.create(
        workspace=workspace, serial=7, lineage="l-1", sha256="ab" * 32, size=3, encrypted_data=crypto.encrypt(b"{}")
    )
    text = page(client_alice.get(reverse("workspace-detail", args=[workspace.id])))
    assert "greeting" in text
    assert "hi-there" in text
    assert "<td>7</td>" in text


def test_it_never_shows_a_sensitive_value(client_alice, workspace, agent):
    var = Variable(workspace=workspace, key="db_password", sensitive=True)
    var.set_value(SECRET)
    var.save()
    task = make_apply_pending(workspace, agent=agent)
    urls = [
        "/",
        reverse("workspace-detail", args=[workspace.id]),
        reverse("run-detail", args=[task.id]),
        reverse("pool-list"),
        reverse("pool-detail", args=[workspace.pool_id]),
        reverse("admin:tasks_app_variable_changelist"),
        reverse("admin:tasks_app_variable_change", args=[var.id]),
    ]
    for url in urls:
        response = client_alice.get(url)
        assert response.status_code == 200, url
        assert SECRET not in response.content.decode(), url
    text = page(client_alice.get(reverse("workspace-detail", args=[workspace.id])))
    assert "db_password" in text
    assert "sensitive" in text


# Runs


def test_it_shows_confirm_and_a_warm_apply_on_the_run_page(client_alice, workspace, agent):
    task = make_apply_pending(workspace, agent=agent)
    text = page(client_alice.get(reverse("run-detail", args=[task.id])))
    assert "Confirm Apply" in text
    assert "Discard" in text
    assert "Cancel run" in text
    assert "Apply will start warm on agent agent-blue (expires " in text
    # Plan summary, hash and timeline.
    assert "+1 to add" in text
    assert "terraform_data.demo" in text
    assert task.plan_hash in text
    assert "apply_pending" in text
    until = timezone.localtime(task.warmup_expires_at).strftime("%H:%M:%S")
    assert f"apply_pending: waiting for confirmation (warm on agent-blue slot 0 until {until})" in text


def test_it_queues_a_warmup_when_the_confirm_page_opens_on_a_cold_run(client_alice, workspace):
    task = make_apply_pending(workspace)  # no agent holds its dir
    text = page(client_alice.get(reverse("run-detail", args=[task.id])))
    assert Job.objects.filter(task=task, kind=JobKind.WARMUP, status=JobStatus.QUEUED).count() == 1
    assert "a warmup job is queued" in text
    assert "Confirming now runs cold" in text


def test_it_explains_a_failed_warmup(client_alice, workspace):
    task = make_apply_pending(workspace)
    Task.objects.filter(id=task.id).update(
        warmup_status=WarmupStatus.FAILED, warmup_retry_count=3, warmup_message="terraform init failed"
    )
    text = page(client_alice.get(reverse("run-detail", args=[task.id])))
    assert "Apply will run cold: the warmup failed 3 times: terraform init failed" in text


def test_it_confirms_once_and_refuses_a_second_confirm(client_alice, workspace, agent):
    task = make_apply_pending(workspace, agent=agent)
    url = reverse("run-confirm", args=[task.id])

    response = client_alice.post(url, follow=True)
    task.refresh_from_db()
    assert task.status == RunStatus.APPLY_QUEUED
    assert Job.objects.filter(task=task, kind=JobKind.APPLY).count() == 1
    assert Job.objects.get(task=task, kind=JobKind.APPLY).target_agent == agent
    assert "Apply confirmed" in page(response)
    assert "Confirm Apply" not in page(response)

    again = client_alice.post(url, follow=True)
    assert again.status_code == 200
    assert "only a run in 'apply_pending' can be confirmed" in page(again)
    assert Job.objects.filter(task=task, kind=JobKind.APPLY).count() == 1


def test_it_shows_why_a_stale_plan_was_discarded(client_alice, workspace):
    task = make_apply_pending(workspace)
    # The state changed after the plan was made.
    StateVersion.objects.create(
        workspace=workspace, serial=1, lineage="l-1", sha256="cd" * 32, size=2, encrypted_data=crypto.encrypt(b"{}")
    )
    response = client_alice.post(reverse("run-confirm", args=[task.id]), follow=True)
    task.refresh_from_db()
    assert task.status == RunStatus.DISCARDED
    assert not Job.objects.filter(task=task, kind=JobKind.APPLY).exists()
    assert "Apply refused: stale plan" in page(response)


def test_it_discards_a_pending_apply(client_alice, workspace):
    task = make_apply_pending(workspace)
    response = client_alice.post(reverse("run-discard", args=[task.id]), follow=True)
    task.refresh_from_db()
    assert task.status == RunStatus.DISCARDED
    text = page(response)
    assert "Run discarded" in text
    assert "discarded by alice" in text
    assert "Confirm Apply" not in text


def test_it_cancels_a_run(client_alice, workspace):
    task = make_apply_pending(workspace)
    response = client_alice.post(reverse("run-cancel", args=[task.id]), follow=True)
    task.refresh_from_db()
    assert task.status == RunStatus.CANCELLED
    assert "Run cancelled" in page(response)
    assert "Cancel run" not in page(response)

    again = client_alice.post(reverse("run-cancel", args=[task.id]), follow=True)
    assert "is already 'cancelled'" in page(again)


def test_it_shows_the_apply_path_and_latency(client_alice, workspace):
    task = make_apply_pending(workspace)
    confirmed = timezone.now()
    Task.objects.filter(id=task.id).update(
        status=RunStatus.APPLIED,
        confirmed_at=confirmed,
        apply_started_at=confirmed + timedelta(milliseconds=120),
        first_apply_log_at=confirmed + timedelta(milliseconds=250),
        apply_path=ApplyPath.FAST,
        apply_path_reason="plan dir kept on agent-blue",
    )
    text = page(client_alice.get(reverse("run-detail", args=[task.id])))
    assert "fast" in text
    assert "plan dir kept on agent-blue" in text
    assert "120 ms" in text
    assert "250 ms" in text
    assert "Cancel run" not in text


def test_it_shows_the_run_log(client_alice, workspace):
    task = make_apply_pending(workspace)
    job = Job.objects.create(task=task, pool=workspace.pool, kind=JobKind.PLAN, status=JobStatus.SUCCEEDED)
    task.log_chunks.create(job=job, seq=0, offset=0, text="Plan: 1 to add, 0 to change, 0 to destroy.\n")
    text = page(client_alice.get(reverse("run-detail", args=[task.id])))
    assert "Plan: 1 to add, 0 to change, 0 to destroy." in text


# Pools


def test_it_lists_pools_agents_and_slots(client_alice, workspace, agent):
    task = make_apply_pending(workspace, agent=agent)
    text = page(client_alice.get(reverse("pool-list")))
    assert workspace.pool.name in text

    text = page(client_alice.get(reverse("pool-detail", args=[workspace.pool_id])))
    assert "agent-blue" in text
    assert "online" in text
    assert "last heartbeat" in text
    assert text.count("slot slot-") == 3
    assert "reserved" in text
    assert f"run {task.id}" in text


# Admin


def test_it_renders_the_admin_changelists_for_task_and_variable(client_alice, workspace):
    make_apply_pending(workspace)
    var = Variable(workspace=workspace, key="region")
    var.set_value("eu-west-1")
    var.save()
    for name in ["tasks_app_task", "tasks_app_variable"]:
        response = client_alice.get(reverse(f"admin:{name}_changelist"))
        assert response.status_code == 200, name
    assert "eu-west-1" in page(client_alice.get(reverse("admin:tasks_app_variable_changelist")))


def test_it_registers_every_model_of_both_apps_in_the_admin(client_alice, workspace, agent):
    make_apply_pending(workspace, agent=agent)
    for app_label in ["tasks_app", "agents_app"]:
        for model in apps.get_app_config(app_label).get_models():
            name = f"{app_label}_{model._meta.model_name}"
            assert admin.site.is_registered(model), name
            assert client_alice.get(reverse(f"admin:{name}_changelist")).status_code == 200, name
            obj = model.objects.first()
            if obj is not None:
                assert client_alice.get(reverse(f"admin:{name}_change", args=[obj.pk])).status_code == 200, name


def test_it_keeps_a_sensitive_value_when_the_admin_form_leaves_it_blank(client_alice, workspace):
    var = Variable(workspace=workspace, key="token", sensitive=True)
    var.set_value(SECRET)
    var.save()
    response = client_alice.post(
        reverse("admin:tasks_app_variable_change", args=[var.id]),
        {"workspace": workspace.id, "key": "token", "category": "terraform", "sensitive": "on", "value": ""},
    )
    assert response.status_code == 302
    var.refresh_from_db()
    assert var.value == SECRET
    assert var.plain_value == ""


def test_it_shows_a_new_pool_token_once_in_the_admin(client_alice):
    response = client_alice.post(
        reverse("admin:agents_app_agentpool_add"),
        {
            "name": "admin-pool",
            "backend": "static",
            "min_replicas": 0,
            "max_replicas": 2,
            "slots_per_pod": 3,
            "warm_apply": "on",
            "drift_schedule": "", "drift_timezone": "UTC",  # as the add form shows them
            **ADMIN_BOUNDS,
        },
        follow=True,
    )
    pool = AgentPool.objects.get(name="admin-pool")
    assert pool.token_hash
    assert "Pool token for admin-pool (shown once" in page(response)


# What the admin's add form shows for a new pool's bounds (the IAC_*_SECONDS defaults).
ADMIN_BOUNDS = {
    "plan_timeout_seconds": 3600, "plan_kill_grace_seconds": 30, "apply_timeout_seconds": 7200,
    "apply_kill_grace_seconds": 900, "no_agent_timeout_seconds": 1800, "apply_pending_timeout_seconds": 0,
    # the autoscaler's
    "scale_up_delay_seconds": 30, "scale_down_delay_seconds": 900, "cooldown_seconds": 900,
    "warmup_expire_seconds": 1800, "warmup_max_retries": 3, "pod_start_wait_seconds": 60,
    "pod_register_deadline_seconds": 180,
    # the kubernetes backend's (prefilled in the form)
    "k8s_namespace": "iac-agents", "k8s_image": "iac-agent:latest",
}


def test_it_offers_a_new_pools_bounds_from_the_settings_and_refuses_a_bad_one_in_the_admin(client_alice, settings):
    settings.IAC_PLAN_TIMEOUT_SECONDS = 600
    form = page(client_alice.get(reverse("admin:agents_app_agentpool_add")))
    assert 'name="plan_timeout_seconds" value="600"' in form
    assert 'name="apply_kill_grace_seconds" value="900"' in form

    response = client_alice.post(
        reverse("admin:agents_app_agentpool_add"),
        {"name": "bad-bounds", "backend": "local", "min_replicas": 1, "max_replicas": 2, "slots_per_pod": 3,
         **ADMIN_BOUNDS, "apply_timeout_seconds": 0},
    )
    assert response.status_code == 200  # the form again, with the error
    assert "must be a positive number of seconds (at least 1)" in page(response)
    assert not AgentPool.objects.filter(name="bad-bounds").exists()
