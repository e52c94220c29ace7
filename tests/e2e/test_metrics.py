"""/metrics of the real platform (Daphne subprocess, its own registry) around a real
fast-path apply: the Confirm-latency histograms gain one observation under path="fast"."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.live import METRICS_TOKEN

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def scrape(live_url: str) -> dict[tuple[str, frozenset], float]:
    resp = requests.get(f"{live_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert resp.status_code == 200, resp.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def count(scraped: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return scraped.get((f"{name}_count", frozenset(labels.items())), 0.0)


def test_it_refuses_anonymous_scrapes_of_the_live_server(live_url):
    assert requests.get(f"{live_url}/metrics", timeout=10).status_code == 401


def test_it_observes_a_fast_path_apply_in_the_confirm_latency_histograms(scenario, live_url):
    s = scenario()
    s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    s.user.wait(run["id"], "apply_pending", warmup="ready")
    before = scrape(live_url)

    s.user.confirm(run["id"])
    done = s.user.wait(run["id"], "applied")
    assert done["apply_path"] == "fast"

    after = scrape(live_url)
    for name in ("iac_confirm_to_apply_start_seconds", "iac_confirm_to_first_apply_log_seconds"):
        assert count(after, name, path="fast") == count(before, name, path="fast") + 1, name
        for path in ("rewarmed", "cold"):
            assert count(after, name, path=path) == count(before, name, path=path), (name, path)
    # The run page's number and the histogram's agree (the page rounds to milliseconds).
    key = ("iac_confirm_to_apply_start_seconds_sum", frozenset({"path": "fast"}.items()))
    observed = after[key] - before.get(key, 0.0)
    assert abs(observed - done["confirm_to_apply_start_ms"] / 1000) < 0.002, observed
    # The database gauges see the applied run.
    assert after[("iac_runs", frozenset({"status": "applied"}.items()))] >= 1

