"""A person in real Chromium on the workspaces list and a workspace page: a run's status
moves on the list without a reload, the "needs attention" filter and the search narrow the
list, the workspace page's runs table follows an apply live, and a sensitive variable added
through the page is never shown back. Saves docs/screenshots/workspaces.png and
workspace.png (full pages, 1280 wide)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tasks_app.models import Task
from tests.browser.conftest import SCREENSHOTS
from tests.factories import make_workspace
from tests.live import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SECRET = "browser-secret-4d2b9"


def mark_document(page) -> None:
    """A flag that a reload would wipe: checked later to prove the page changed in place."""
    page.evaluate("window.__sameDocument = true")


def still_same_document(page) -> bool:
    return page.evaluate("window.__sameDocument === true")


def test_it_shows_runs_move_live_and_filters_the_list(page, scenario, alice):
    s = scenario()  # no agent yet: the queued plan waits, so its move is seen on the list
    calm = make_workspace(pool=s.pool, name=f"calm-{s.workspace['id']}")
    name = s.workspace["name"]

    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "alice-password-1")
    page.click("button:has-text('Log in')")
    page.click(f"a:has-text('{name}')")
    page.click("button:has-text('Queue plan & apply')")
    run = wait_for(lambda: Task.objects.filter(workspace_id=s.workspace["id"]).first(), 10, "the run to exist")

    page.goto("/")
    row = page.locator(f"#workspace-row-{s.workspace['id']}")
    expect(row.locator(".status")).to_have_text("plan queued")
    mark_document(page)

    s.agent("a1")
    expect(row.locator(".status")).to_have_text("apply pending", timeout=90_000)
    expect(row).to_contain_text("waiting for Confirm")
    assert still_same_document(page), "the list reloaded instead of updating in place"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "workspaces.png"), full_page=True)

    # Needs attention: the workspace waiting for Confirm stays, the calm one goes.
    page.check("input[name=attention]")
    expect(page.locator(f"#workspace-row-{calm.id}")).to_have_count(0)
    expect(row).to_be_visible()
    expect(page).to_have_url(re.compile(r"attention=1"))
    page.uncheck("input[name=attention]")
    expect(page.locator(f"#workspace-row-{calm.id}")).to_be_visible()

    # Search narrows by name, in place.
    page.fill("input[name=q]", calm.name)
    expect(row).to_have_count(0)
    expect(page.locator(f"#workspace-row-{calm.id}")).to_be_visible()
    page.fill("input[name=q]", "no-such-workspace")
    expect(page.locator("#workspace-table")).to_contain_text("No workspace matches")
    assert still_same_document(page)

    # The workspace page follows the apply live.
    page.goto(f"/workspaces/{s.workspace['id']}/")
    run_row = page.locator(f"#run-row-{run.id}")
    expect(run_row.locator(".status")).to_have_text("apply pending")
    mark_document(page)
    s.user.confirm(run.id)
    expect(run_row.locator(".status")).to_have_text("applied", timeout=90_000)
    assert still_same_document(page), "the workspace page reloaded instead of updating in place"

    # A sensitive variable through the form: accepted, then never shown back.
    page.fill("#variable-add input[name=key]", "db_password")
    page.fill("#variable-add input[name=value]", SECRET)
    page.check("#variable-add input[name=sensitive]")
    page.click("#variable-add button:has-text('Add variable')")
    expect(page.locator(".messages")).to_contain_text("Variable db_password added.")
    expect(page.locator("#variables")).to_contain_text("sensitive · write-only")
    assert SECRET not in page.content()

    page.reload()
    expect(page.locator("#state")).to_contain_text("run")  # the apply wrote a state version
    page.screenshot(path=str(SCREENSHOTS / "workspace.png"), full_page=True)

    # On a phone the pages fit the screen: tables scroll inside their frame, not the page.
    page.set_viewport_size({"width": 390, "height": 800})
    for path in (f"/workspaces/{s.workspace['id']}/", "/"):
        page.goto(path)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, f"{path} is wider than a phone"
    page.screenshot(path="/tmp/workspaces-phone.png", full_page=True)

    # Every action is reachable from the keyboard: Tab from the top reaches the search box.
    page.goto("/")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.name") == "q":
            break
    assert page.evaluate("document.activeElement.name") == "q", "the search box is not reachable with Tab"
