"""The Confirm Apply dialog as htmx sees it: its own hx-get, its posts answered with the
dialog, and every refusal rendered inside it with a 4xx status, changing nothing.

No agents run here (as in test_pages.py): runs are put into apply_pending by writing their
rows, and warm reservations by writing their slots."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agents_app.models import Agent, AgentPool, FreezeWindow
from agents_app.protocol import JobKind, JobStatus
from iacplatform import crypto
from tasks_app.dispatch.models import Job
from tasks_app.models import StateVersion, Task
from tasks_app.states import ApplyPath, RunStatus, WarmupStatus
from tasks_app.views_confirm import confirm_dialog_html
from tests.factories import grant, make_agent
from tests.tasks_app.test_pages import make_apply_pending

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def client_alice(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


@pytest.fixture
def agent(pool: AgentPool) -> Agent:
    agent, _token = make_agent(pool=pool, name="agent-blue")
    return agent


@pytest.fixture
def reader(django_user_model, workspace):
    """bob, a team member with `read` on the workspace only."""
    bob = django_user_model.objects.create_user("bob", password="bob-password-1")
    grant(bob, workspace, "read", team_name="readers")
    return bob


def text(response) -> str:
    return unescape(response.content.decode())


def plain(html: str) -> str:
    """The words a user reads: tags dropped, white space collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def dialog(response) -> str:
    body = text(response)
    assert 'id="confirm-dialog"' in body
    return body


def unchanged(task: Task) -> None:
    fresh = Task.objects.get(id=task.id)
    assert fresh.status == RunStatus.APPLY_PENDING
    assert fresh.confirmed_at is None
    assert not Job.objects.filter(task=task, kind=JobKind.APPLY).exists()


# Showing it


def test_it_shows_a_ready_run_with_its_agent_slot_and_relative_times(client_alice, workspace, agent):
    task = make_apply_pending(workspace, agent=agent)
    body = dialog(client_alice.get(reverse("run-confirm-dialog", args=[task.id]), **HX))
    assert "+1 to add, ~0 to change, -0 to destroy" in plain(body)
    assert "Apply will start warm on agent agent-blue" in body
    assert "agent-blue, slot 0" in body
    expires = timezone.localtime(Task.objects.get(id=task.id).warmup_expires_at)
    # A relative time, the exact one on hover.
    assert re.search(rf'<time datetime="{re.escape(expires.isoformat())}" title="{expires:%Y-%m-%d %H:%M:%S}[^"]*">2\d.minutes from now</time>', body), body
    assert "Confirm Apply" in body and "Discard" in body and "Force-cancel" in body
    assert "hx-swap-oob" not in body, "its own hx-get swaps it as the target"
    assert "every 2s" not in body, "nothing is on its way: no refresh"


def test_it_requests_a_warmup_when_opened_on_a_cold_run_and_refreshes_while_it_waits(client_alice, workspace):
    task = make_apply_pending(workspace)
    body = dialog(client_alice.get(reverse("run-confirm-dialog", args=[task.id]), **HX))
    assert Job.objects.filter(task=task, kind=JobKind.WARMUP, status=JobStatus.QUEUED).count() == 1
    assert "warmup queued" in body
    assert "a warmup job is queued, waiting for an agent. Confirming now runs cold" in body
    assert 'hx-trigger="every 2s"' in body


def test_it_shows_a_running_warmup_with_its_progress(client_alice, workspace, agent):
    task = make_apply_pending(workspace)
    started = timezone.now() - timedelta(seconds=75)
    Job.objects.create(task=task, pool=workspace.pool, kind=JobKind.WARMUP, status=JobStatus.RUNNING,
                       agent=agent, slot_index=1, claimed_at=started)
    Task.objects.filter(id=task.id).update(warmup_status=WarmupStatus.WARMING, warmup_at=started)
    body = dialog(client_alice.get(reverse("run-confirm-dialog", args=[task.id]), **HX))
    assert "warming up" in body
    assert "A warmup is running on agent agent-blue" in body
    assert "agent-blue, slot 1" in body
    assert "Warmup job running for 1 minute" in plain(body)
    assert re.search(r'<time datetime="[^"]+" title="[^"]+">1\xa0minute</time>', body), "the exact start on hover"


def test_it_shows_a_cold_run_and_why(client_alice, workspace):
    task = make_apply_pending(workspace)
    Task.objects.filter(id=task.id).update(
        warmup_status=WarmupStatus.FAILED, warmup_retry_count=3, warmup_message="terraform init failed"
    )
    body = dialog(client_alice.get(reverse("run-confirm-dialog", args=[task.id]), **HX))
    assert "Apply will run cold: the warmup failed 3 times: terraform init failed" in body
    assert not Job.objects.filter(task=task, kind=JobKind.WARMUP).exists(), "a failed warmup is not retried"


def test_it_renders_the_same_dialog_out_of_band_for_the_websocket(workspace, agent, alice):
    task = make_apply_pending(workspace, agent=agent)
    html = confirm_dialog_html(task.id, alice)
    assert re.match(r'\s*<section [^>]*id="confirm-dialog"[^>]* hx-swap-oob="true"', html), html[:300]
    assert "Apply will start warm on agent agent-blue" in html


def test_it_shows_which_path_ran_and_the_confirm_to_apply_time(client_alice, workspace):
    task = make_apply_pending(workspace)
    confirmed = timezone.now()
    Task.objects.filter(id=task.id).update(
        status=RunStatus.APPLIED, confirmed_at=confirmed,
        apply_started_at=confirmed + timedelta(milliseconds=120),
        first_apply_log_at=confirmed + timedelta(milliseconds=250),
        apply_path=ApplyPath.COLD, apply_path_reason="the warm dir expired before Confirm",
    )
    body = dialog(client_alice.get(reverse("run-confirm-dialog", args=[task.id]), **HX))
    assert "cold" in body and "the warm dir expired before Confirm" in body
    assert "120 ms" in body and "250 ms" in body
    assert "Confirm Apply" not in body and "Cancel" not in body


# Acting in it


def test_it_confirms_with_htmx_and_answers_with_the_dialog_starting_warm(client_alice, workspace, agent):
    task = make_apply_pending(workspace, agent=agent)
    response = client_alice.post(reverse("run-confirm", args=[task.id]), {"comment": "ship it"}, **HX)
    assert response.status_code == 200
    body = dialog(response)
    assert "Apply confirmed — starting warm on agent agent-blue, slot 0." in body
    assert "Confirm Apply" not in body
    assert 'hx-trigger="every 2s"' in body, "it follows the apply until it ends"
    job = Job.objects.get(task=task, kind=JobKind.APPLY)
    assert (job.agent, job.status) == (agent, JobStatus.RUNNING)


def test_it_discards_and_cancels_with_htmx(client_alice, workspace):
    task = make_apply_pending(workspace)
    response = client_alice.post(reverse("run-discard", args=[task.id]), **HX)
    assert response.status_code == 200 and Task.objects.get(id=task.id).status == RunStatus.DISCARDED
    assert "Run discarded." in dialog(response)

    other = make_apply_pending(workspace)
    response = client_alice.post(reverse("run-cancel", args=[other.id]), {"force": "1"}, **HX)
    assert response.status_code == 200 and Task.objects.get(id=other.id).status == RunStatus.CANCELLED
    assert "Run cancelled." in dialog(response)


# Refusals: a 4xx, the reason in the dialog, nothing changed


def test_it_refuses_confirm_in_a_freeze_window_inside_the_dialog(client_alice, workspace, agent):
    task = make_apply_pending(workspace, agent=agent)
    now = timezone.now()
    FreezeWindow.objects.create(pool=workspace.pool, name="release", kind="one_off",
                                starts_at=now - timedelta(minutes=5), ends_at=now + timedelta(hours=1))
    response = client_alice.post(reverse("run-confirm", args=[task.id]), **HX)
    assert response.status_code == 409
    assert response["X-Confirm-Dialog"] == "1"
    body = dialog(response)
    assert f"pool '{workspace.pool.name}' is frozen until" in body and "Confirm Apply is refused" in body
    assert 'class="message error"' in body
    unchanged(task)


def test_it_refuses_a_stale_plan_inside_the_dialog(client_alice, workspace):
    task = make_apply_pending(workspace)
    StateVersion.objects.create(
        workspace=workspace, serial=1, lineage="l-1", sha256="cd" * 32, size=2, encrypted_data=crypto.encrypt(b"{}")
    )
    response = client_alice.post(reverse("run-confirm", args=[task.id]), **HX)
    assert response.status_code == 409
    assert "Apply refused: stale plan: the workspace state changed after the plan" in dialog(response)
    # Nothing applied; the run is discarded, as Terraform would refuse the stale plan too.
    assert not Job.objects.filter(task=task, kind=JobKind.APPLY).exists()
    assert Task.objects.get(id=task.id).status == RunStatus.DISCARDED


def test_it_refuses_a_second_confirm_inside_the_dialog(client_alice, workspace, agent):
    task = make_apply_pending(workspace, agent=agent)
    assert client_alice.post(reverse("run-confirm", args=[task.id]), **HX).status_code == 200
    again = client_alice.post(reverse("run-confirm", args=[task.id]), **HX)
    assert again.status_code == 409
    assert "only a run in 'apply_pending' can be confirmed" in dialog(again)
    assert Job.objects.filter(task=task, kind=JobKind.APPLY).count() == 1


def test_it_refuses_confirm_discard_and_force_cancel_without_permission_inside_the_dialog(workspace, agent, reader):
    task = make_apply_pending(workspace, agent=agent)
    client = Client()
    client.force_login(reader)
    for name, data in [("run-confirm", {}), ("run-discard", {}), ("run-cancel", {"force": "1"})]:
        response = client.post(reverse(name, args=[task.id]), data, **HX)
        assert response.status_code == 403, name
        assert "you need 'write' on workspace" in dialog(response) or "you need 'admin'" in dialog(response), name
    unchanged(task)


def test_a_reader_sees_no_confirm_button_and_a_forged_post_is_refused(workspace, agent, reader, charlie):
    task = make_apply_pending(workspace, agent=agent)
    client = Client(enforce_csrf_checks=True)
    client.force_login(reader)
    run_page = text(client.get(reverse("run-detail", args=[task.id])))
    assert "Confirm Apply" not in run_page and "Discard" not in run_page
    assert "Waiting for someone allowed to confirm" in run_page
    assert Job.objects.filter(task=task, kind=JobKind.WARMUP).count() == 0, "a reader's visit asks for nothing"

    token = client.cookies["csrftoken"].value
    forged = client.post(reverse("run-confirm", args=[task.id]), {"csrfmiddlewaretoken": token, "comment": "x"})
    assert forged.status_code == 403
    assert "you need 'write' on workspace" in text(forged)
    unchanged(task)

    outsider = Client(enforce_csrf_checks=True)
    outsider.force_login(charlie)
    outsider.get("/")
    forged = outsider.post(reverse("run-confirm", args=[task.id]),
                           {"csrfmiddlewaretoken": outsider.cookies["csrftoken"].value})
    assert forged.status_code == 404
    unchanged(task)


def test_it_falls_back_to_a_redirect_with_a_message_without_htmx(client_alice, workspace, agent):
    task = make_apply_pending(workspace, agent=agent)
    response = client_alice.post(reverse("run-confirm", args=[task.id]), follow=True)
    assert response.redirect_chain[-1][0] == reverse("run-detail", args=[task.id])
    body = text(response)
    assert "Apply confirmed." in body
    assert "Apply confirmed — starting warm on agent agent-blue, slot 0." in body
