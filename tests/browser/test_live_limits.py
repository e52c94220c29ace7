"""In real Chromium: a live page the server ends on purpose says why, and does not pretend to
reconnect: a reader whose team loses access to the workspace, and a user past the cap on
live pages (IAC_WS_MAX_PER_USER, the server's default here)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from django.conf import settings
from django.contrib.auth.models import User
from playwright.sync_api import expect

from tasks_app.models import AccessLevel
from tasks_app.services.runs import run_create
from tests.browser.conftest import log_in
from tests.factories import DEMO_MAIN_TF, grant, make_pool, make_token, make_workspace

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Opens `n` websockets to the workspaces list from the page's own origin (its session cookie),
# resolving once all are open.
OPEN_SOCKETS = """async (n) => {
  const url = location.origin.replace(/^http/, "ws") + "/ws/workspaces/";
  window.__sockets = [];
  await Promise.all(Array.from({length: n}, () => new Promise((resolve, reject) => {
    const s = new WebSocket(url);
    s.onopen = resolve;
    s.onclose = (e) => reject(new Error("closed " + e.code + " " + e.reason));
    window.__sockets.push(s);
  })));
  return window.__sockets.length;
}"""


def off_the_loop(fn, *args):
    """Run `fn` in a thread of its own: Playwright's event loop runs in this one, and the
    services publish their live updates through async_to_sync, which refuses such a thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def a_queued_run():
    pool, _ = make_pool()
    workspace = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    return workspace, run_create(workspace=workspace, operation="plan", actor="test")


def a_reader(workspace) -> None:
    carol = User.objects.create_user("carol", password="carol-password-1")
    grant(carol, workspace, AccessLevel.READ, team_name="viewers")


def test_it_tells_a_reader_who_lost_access_that_the_run_page_stopped(page, live_url, alice):
    workspace, run = off_the_loop(a_queued_run)
    off_the_loop(a_reader, workspace)
    log_in(page, "carol", "carol-password-1")
    page.goto(f"/runs/{run.id}/")
    expect(page.locator(".live-indicator")).to_have_text("● live")

    resp = requests.delete(f"{live_url}/api/v1/workspaces/{workspace.id}/access/viewers/",
                           headers={"Authorization": f"Token {make_token(alice)}"}, timeout=30)
    assert resp.status_code == 204, resp.text
    expect(page.locator(".live-closed")).to_have_text(
        "Live updates stopped: you no longer have access to this page.")
    expect(page.locator(".live-indicator")).to_have_text("○ stopped")


def test_it_tells_a_user_with_too_many_live_pages_to_close_some(browser_context, alice):
    _, run = off_the_loop(a_queued_run)
    cap = settings.IAC_WS_MAX_PER_USER
    holder = browser_context.new_page()
    log_in(holder, "alice", "alice-password-1")
    holder.goto("/tokens/")  # not a live page: the sockets below are all alice has
    assert holder.evaluate(OPEN_SOCKETS, cap) == cap

    page = browser_context.new_page()  # the same session
    page.goto(f"/runs/{run.id}/")
    expect(page.locator(".live-closed")).to_have_text(
        "Live updates stopped: too many live pages are open for your account: close some tabs, then reload.")
    expect(page.locator(".live-indicator")).to_have_text("○ stopped")

    # Closing some frees their places: a reload is live again.
    holder.evaluate("window.__sockets.slice(0, 5).forEach(s => s.close())")
    holder.wait_for_function("window.__sockets.slice(0, 5).every(s => s.readyState === WebSocket.CLOSED)")
    page.reload()
    expect(page.locator(".live-indicator")).to_have_text("● live")
    expect(page.locator(".live-closed")).to_have_count(0)
