"""A person in real Chromium: log in, open the workspace, queue a plan & apply, read the
warm explanation next to Confirm Apply, click it, see the run applied on the fast path."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect, sync_playwright

from tasks_app.models import Task
from tests.live import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]


@pytest.fixture
def page(live_url, monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the test's own ORM reads are
    # plain synchronous queries, which Django would otherwise refuse here.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(base_url=live_url)
        page = context.new_page()
        page.set_default_timeout(30_000)
        yield page
        browser.close()


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
