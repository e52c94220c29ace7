"""A person in real Chromium: log in, open the workspace, queue a plan & apply, read the
warm explanation next to Confirm Apply, click it, see the run applied on the fast path; the
dialog turning ready and then applied without a reload; a reader offered nothing to click."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tasks_app.dispatch.models import Job
from tasks_app.models import AuditEvent, Task
from tests.browser.conftest import SCREENSHOTS, log_in
from tests.factories import grant
from tests.live import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_it_confirms_an_apply_from_the_run_page(page, scenario, alice):
    s = scenario()
    a1 = s.agent("a1")

    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "alice-password-1")
    page.click("button:has-text('Log in')")
    page.click(f"text={s.workspace['name']}")
    page.click("button:has-text('plan & apply')")

    run = wait_for(lambda: Task.objects.filter(workspace_id=s.workspace["id"]).first(), 10, "the run to exist")
    wait_for(lambda: Task.objects.get(id=run.id).status == "apply_pending", 60, "apply_pending")
    page.goto(f"/runs/{run.id}/")
    expect(page.locator("body")).to_contain_text(f"Apply will start warm on agent {a1.name}")
    expect(page.locator("body")).to_contain_text("Plan: 1 to add")

    page.click("button:has-text('Confirm Apply')")
    wait_for(lambda: Task.objects.get(id=run.id).status == "applied", 60, "applied")
    page.goto(f"/runs/{run.id}/")
    body = page.locator("body")
    expect(body).to_contain_text("applied")
    expect(body).to_contain_text("fast")
    expect(body).to_contain_text("Apply complete!")
    assert s.applies() == 1


def test_it_turns_the_dialog_ready_then_applied_without_a_reload(page, scenario, alice, django_user_model):
    s = scenario()
    a1 = s.agent("a1", slots=1)
    run = s.user.queue(s.workspace["id"])
    s.user.wait(run["id"], "apply_pending", warmup="ready")
    # The agent holding the warm dir dies: the run is not warm anywhere when the page opens.
    a1.kill()
    wait_for(lambda: Task.objects.get(id=run["id"]).warmup_status in ("none", "expired"), 30,
             "the dead agent's reservation to be released")

    log_in(page, "alice", "alice-password-1")
    page.goto(f"/runs/{run['id']}/")
    page.evaluate("window.notReloaded = true")
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_contain_text("Confirm apply")
    expect(dialog).to_contain_text(re.compile(r"warmup queued|cold"))
    page.fill("#confirm-comment", "ship it")  # typed while the dialog refreshes itself
    # Opening the dialog asked for a warmup; an agent comes and takes it.
    wait_for(lambda: Job.objects.filter(task_id=run["id"], kind="warmup").exists(), 10, "a warmup job")
    a2 = s.agent("a2", slots=1)
    expect(dialog).to_contain_text(f"Apply will start warm on agent {a2.name}", timeout=60_000)
    expect(dialog.locator(".readiness-badge")).to_have_text("ready")
    expect(dialog.locator("time").first).to_have_attribute("title", re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "confirm.png"), full_page=True)

    expect(page.locator("#confirm-comment")).to_have_value("ship it")
    page.click("#confirm-dialog button:has-text('Confirm Apply')")
    expect(dialog).to_contain_text(
        re.compile(rf"Apply confirmed — starting warm on agent {a2.name}|(Applying|Applied) on agent {a2.name}"))
    expect(dialog).to_contain_text(f"Applied on agent {a2.name} (rewarmed path", timeout=60_000)
    expect(dialog).to_contain_text(re.compile(r"Confirm → apply start\s*\d+ ms"))
    # The run page's websocket brought the apply's log and the final status along.
    expect(page.locator("#run-log")).to_contain_text("Apply complete!", timeout=30_000)
    expect(page.locator("#run-status")).to_have_text("applied")
    assert page.evaluate("window.notReloaded") is True, "the page was never reloaded"
    assert s.applies() == 1
    assert Task.objects.get(id=run["id"]).status == "applied"
    confirmed = AuditEvent.objects.get(action="run.confirm", object_id=str(run["id"]))
    assert confirmed.data["comment"] == "ship it", "the comment typed before the refreshes was sent"


def test_a_reader_sees_the_dialog_without_confirm(page, scenario, django_user_model):
    s = scenario()
    s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    s.user.wait(run["id"], "apply_pending", warmup="ready")
    bob = django_user_model.objects.create_user("bob", password="bob-password-1")
    grant(bob, Task.objects.get(id=run["id"]).workspace, "read", team_name="readers")

    log_in(page, "bob", "bob-password-1")
    page.goto(f"/runs/{run['id']}/")
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_contain_text("Waiting for someone allowed to confirm")
    expect(dialog).to_contain_text("Apply will start warm on agent")
    expect(page.locator("button:has-text('Confirm Apply')")).to_have_count(0)
    expect(page.locator("button:has-text('Discard')")).to_have_count(0)
