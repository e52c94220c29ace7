"""An admin in real Chromium watches a pool's slot grid change while a run holds a slot (a
real agent, real terraform), without reloading; the API docs render with no network."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from tests.browser.conftest import SCREENSHOTS, log_in
from tests.live import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


# The apply takes a few seconds (local-exec runs at apply time): long enough to see the slot
# running it.
SLOW_APPLY_TF = """
variable "marker_file" {
  type = string
}

resource "terraform_data" "slow" {
  input = "slow"

  provisioner "local-exec" {
    command = "sleep 4; echo applied >> ${var.marker_file}"
  }
}
"""


def test_it_shows_a_pools_slot_grid_change_while_a_run_holds_a_slot(page, scenario, alice):
    s = scenario(files={"main.tf": SLOW_APPLY_TF})
    agent = s.agent("grid", slots=2)
    # A release freeze next week: the page says when the pool freezes next.
    starts = timezone.now() + timedelta(days=7)
    s.user.request("POST", f"/api/v1/pools/{s.pool.id}/freeze-windows/", expect=201, json={
        "name": "release freeze", "reason": "quarter-end release", "kind": "one_off",
        "starts_at": starts.isoformat(), "ends_at": (starts + timedelta(days=1)).isoformat()})
    log_in(page, "alice", "alice-password-1")
    page.goto(f"/pools/{s.pool.id}/")
    # A mark that a reload would wipe out: everything below must arrive over the websocket.
    page.evaluate("window.__notReloaded = true")
    expect(page.locator(".live-dot")).to_have_text("live")  # the websocket is open
    slot0 = page.locator(f'#pool-slots li.slot[data-agent="{agent.name}"][data-index="0"]')
    expect(slot0).to_have_attribute("data-state", "idle")
    expect(page.locator("#pool-freeze")).to_contain_text("next freeze in 6 d 23 h (release freeze)")
    expect(page.locator("#pool-agents")).to_contain_text(re.compile(r"last heartbeat \d+ s ago"))

    run = s.user.queue(s.workspace["id"])
    # The plan finishes, its dir is kept for the apply: the slot holds the run, reserved.
    s.user.wait(run["id"], "apply_pending", warmup="ready", timeout=120)
    reserved = page.locator('#pool-slots li.slot[data-state="reserved"]')
    expect(reserved).to_contain_text(f"run {run['id']}", timeout=15_000)

    assert s.user.confirm(run["id"]).status_code == 200
    running = page.locator('#pool-slots li.slot[data-state="running"]')
    expect(running).to_contain_text(f"run {run['id']}", timeout=15_000)
    expect(running).to_contain_text("apply job")
    expect(running.locator("a")).to_have_attribute("href", f"/runs/{run['id']}/")
    page.screenshot(path=str(SCREENSHOTS / "pool.png"), full_page=True)

    s.user.wait(run["id"], "applied", timeout=120)
    expect(page.locator('#pool-slots li.slot[data-state="idle"]')).to_have_count(2, timeout=15_000)
    expect(page.locator("#pool-slots")).not_to_contain_text(f"run {run['id']}")
    assert page.evaluate("window.__notReloaded === true"), "the page was reloaded"
    assert s.applies() == 1


def test_it_renders_the_api_docs_with_no_network(page, live_url, alice):
    host = urlsplit(live_url).netloc
    outside: list[str] = []

    def only_the_server(route) -> None:
        url = route.request.url
        if urlsplit(url).netloc == host:
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", only_the_server)
    log_in(page, "alice", "alice-password-1")
    page.goto("/api/docs/")
    # Swagger UI's operations list, built from /api/schema/ by the script served from static/.
    expect(page.locator(".opblock").first).to_be_visible(timeout=30_000)
    expect(page.locator(".opblock-summary-path", has_text="/api/v1/workspaces/").first).to_be_visible()
    wait_for(lambda: page.locator(".opblock").count() > 20, 10, "the operations list")
    page.screenshot(path=str(SCREENSHOTS / "api-docs.png"), full_page=True)

    page.goto("/api/redoc/")
    # Redoc lays a large schema out slowly on a busy machine.
    expect(page.locator("h1", has_text="IaC platform API")).to_be_visible(timeout=60_000)
    assert outside == [], f"the docs asked the network for {outside}"


def test_it_lifts_a_freeze_from_a_live_rerendered_fragment(page, scenario, alice):
    s = scenario()
    now = timezone.now()
    windows = f"/api/v1/pools/{s.pool.id}/freeze-windows/"
    s.user.request("POST", windows, expect=201, json={
        "name": "hold", "kind": "one_off", "starts_at": (now - timedelta(minutes=1)).isoformat(),
        "ends_at": (now + timedelta(hours=1)).isoformat()})
    log_in(page, "alice", "alice-password-1")
    page.goto(f"/pools/{s.pool.id}/")
    expect(page.locator("#pool-freeze")).to_contain_text("frozen until")
    # Another window arrives over the websocket: the freeze fragment (and its Lift form, with
    # a CSRF token the consumer derived from the browser's cookie) is rendered anew.
    s.user.request("POST", windows, expect=201, json={
        "name": "next week", "kind": "one_off", "starts_at": (now + timedelta(days=7)).isoformat(),
        "ends_at": (now + timedelta(days=8)).isoformat()})
    expect(page.locator("#pool-freeze")).to_contain_text("next week", timeout=15_000)

    page.fill("#pool-freeze input[name=reason]", "hotfix must ship")
    page.click("#pool-freeze button:has-text('Lift now')")
    expect(page.locator(".message.success")).to_contain_text("Freeze window 'hold' lifted.")
    expect(page.locator("#pool-freeze")).to_contain_text("not frozen")
    expect(page.locator("#pool-freeze")).to_contain_text("by alice: hotfix must ship")
