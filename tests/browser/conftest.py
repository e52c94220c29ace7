"""Real Chromium (Debian's /usr/bin/chromium) through Playwright's sync API, against the live
platform of tests/live.py: one browser per test, a 1280-wide context, and a logged-in helper.
The tests save the pages they show to docs/screenshots/ for the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]


@pytest.fixture
def browser_context(live_url, monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the test's own ORM reads are
    # plain synchronous queries, which Django would otherwise refuse here.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(base_url=live_url, viewport={"width": 1280, "height": 900})
        yield context
        browser.close()


@pytest.fixture
def page(browser_context):
    page = browser_context.new_page()
    page.set_default_timeout(30_000)
    return page


def log_in(page, username: str, password: str) -> None:
    page.goto("/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button:has-text('Log in')")
    expect(page).not_to_have_url(re.compile(r"/accounts/login/"))
    expect(page.locator(".site-header")).to_contain_text(username)
