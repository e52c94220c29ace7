"""A person in real Chromium watches a run live: log in, queue a plan & apply, open the run
page, and see the status change and the log grow (terraform's output, in colour) without a
reload, from the plan to the end of the apply. Saves docs/screenshots/run.png."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tasks_app.models import Task
from tests.browser.conftest import SCREENSHOTS
from tests.live import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


# An apply that prints a line a second for 8 s: long enough to see lines arrive while the run
# is still applying.
TICKING_MAIN_TF = """
variable "marker_file" {
  type = string
}

resource "terraform_data" "ticker" {
  input = "ticking"

  provisioner "local-exec" {
    command = "for i in 1 2 3 4 5 6 7 8; do echo tick-$i; sleep 1; done; echo applied >> ${var.marker_file}"
  }
}
"""


def ticks(page) -> int:
    return len(re.findall(r"tick-\d", page.locator("#run-log").inner_text()))


def test_it_shows_the_log_growing_and_the_status_changing_without_a_reload(page, scenario, user):
    s = scenario(files={"main.tf": TICKING_MAIN_TF})
    s.agent("a1")

    page.goto("/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "alice-password-1")
    page.click("button:has-text('Log in')")
    page.click(f"text={s.workspace['name']}")
    page.click("button:has-text('plan & apply')")
    run = wait_for(lambda: Task.objects.filter(workspace_id=s.workspace["id"]).first(), 10, "the run to exist")

    page.goto(f"/runs/{run.id}/")
    # Anything that reloads or navigates the page drops this marker.
    page.evaluate("window.__sameDocument = true")
    status, log = page.locator("#run-status"), page.locator("#run-log")
    expect(page.locator(".live-indicator")).to_have_text("● live")

    # The plan: its log and the new status arrive by themselves.
    expect(status).to_have_text("apply_pending", timeout=60_000)
    expect(log).to_contain_text("Plan: 1 to add")
    expect(log.locator("span.ansi1").first).to_be_visible()  # terraform's bold, rendered
    expect(page.locator("#run-plan")).to_contain_text("terraform_data.ticker")

    # The forms the websocket swapped in (the Confirm dialog, Cancel) post with the page's
    # CSRF token: fragments rendered without a request carry none of their own.
    expect(page.locator("#confirm-dialog form").first).to_be_visible()
    assert page.eval_on_selector_all(
        "form[method=post]", "forms => forms.every(f => f.querySelector('input[name=csrfmiddlewaretoken]')?.value)"
    )
    user.confirm(run.id).raise_for_status()  # from elsewhere: this page only watches
    expect(status).to_have_text("applying", timeout=30_000)
    expect(log).to_contain_text("tick-2", timeout=30_000)
    # Still applying, and the log keeps growing under our eyes.
    seen = ticks(page)
    assert Task.objects.get(id=run.id).status == "applying"
    expect(log).to_contain_text(f"tick-{seen + 2}", timeout=10_000)
    assert ticks(page) > seen

    expect(status).to_have_text("applied", timeout=60_000)
    expect(log).to_contain_text("Apply complete!")
    timeline = page.locator("#run-timeline")
    expect(timeline).to_contain_text("applying")
    expect(timeline).to_contain_text("agent a1")
    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    # Every line once, in order: the page's log is the stored log.
    text = log.inner_text()
    assert [int(n) for n in re.findall(r"tick-(\d)", text)] == list(range(1, 9))
    assert text.count("Plan: 1 to add") == 1
    assert s.applies() == 1

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "run.png"), full_page=True)
