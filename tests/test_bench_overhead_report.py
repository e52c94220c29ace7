"""bench/overhead.py's report: the paired overhead takes each round's platform run minus the
bare CLI run beside it, so load that drifts between rounds does not move it."""

from __future__ import annotations

from bench.overhead import summarize


def _rows(load: list[float]) -> list[dict]:
    rows = []
    for i, factor in enumerate(load):  # the machine gets slower and faster between rounds
        for config in ("data", "provider"):
            for way, plan in (("platform", 250), ("bare-http", 200), ("bare-local", 150)):
                rows.append({"way": way, "config": config, "plan_ms": plan * factor, "apply_ms": plan / 2 * factor,
                             "measured": i > 0, "round": i})
    return rows


def test_the_paired_overhead_is_the_median_of_each_rounds_difference():
    summary = summarize(_rows([1.0, 1.0, 1.0, 1.0]))
    assert summary["data"]["paired"]["plan_ms"][0] == 50 and summary["data"]["paired"]["apply_ms"][0] == 25


def test_a_round_is_paired_with_its_own_bare_run_only():
    # Round 0 is the warm-up (not counted); the platform's slow rounds meet slow bare runs:
    # differences 50, 100, 50, 100 (never 250 * 2 - 200 * 1).
    summary = summarize(_rows([9.0, 1.0, 2.0, 1.0, 2.0]))
    median, _, count = summary["data"]["paired"]["plan_ms"]
    assert count == 4 and median == 75
