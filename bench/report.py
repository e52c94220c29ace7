"""Summaries, tables and the plot for the confirm-latency benchmark."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

PATHS = ("fast", "rewarmed", "cold")
TARGETS_MS = {"apply_start_ms": 150, "first_log_ms": 300}  # for the fast and rewarmed paths
METRICS = (("apply_start_ms", "confirm → apply start"), ("first_log_ms", "confirm → first apply log"))
PHASES = (
    ("confirm_to_claim_ms", "confirm → claim txn"),
    ("claim_to_agent_ms", "claim txn → agent has job"),
    ("agent_to_apply_start_ms", "agent has job → apply start"),
    ("apply_start_to_first_log_ms", "apply start → first log at API"),
)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in PATHS:
        rows = [r for r in runs if r["path"] == path]
        if not rows:
            continue
        entry: dict[str, Any] = {"n": len(rows)}
        for key, _ in METRICS + PHASES:
            values = [r[key] for r in rows if r.get(key) is not None]
            entry[key] = {
                "median": statistics.median(values) if values else None,
                "p90": percentile(values, 90) if values else None,
                "min": min(values) if values else None,
                "max": max(values) if values else None,
            }
        out[path] = entry
    if "fast" in out and "cold" in out:
        out["cold_over_fast"] = {
            key: out["cold"][key]["median"] / out["fast"][key]["median"]
            for key, _ in METRICS
            if out["fast"][key]["median"]
        }
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [
        "path",
        "n",
        "apply start median (ms)",
        "apply start p90 (ms)",
        "first log median (ms)",
        "first log p90 (ms)",
    ]
    rows = []
    for path in PATHS:
        if path not in summary:
            continue
        s = summary[path]
        rows.append(
            [
                path,
                str(s["n"]),
                _fmt(s["apply_start_ms"]["median"]),
                _fmt(s["apply_start_ms"]["p90"]),
                _fmt(s["first_log_ms"]["median"]),
                _fmt(s["first_log_ms"]["p90"]),
            ]
        )
    ratio = summary.get("cold_over_fast")
    if ratio:
        rows.append(
            [
                "cold / fast (medians)",
                "",
                f"{ratio.get('apply_start_ms', float('nan')):.1f}×",
                "",
                f"{ratio.get('first_log_ms', float('nan')):.1f}×",
                "",
            ]
        )
    return header, rows


def text_table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    """`align`: one "l" or "r" per column; default: the first column left, the rest right."""
    align = align or "l" + "r" * (len(header) - 1)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(  # noqa: E731
        (c.ljust(w) if a == "l" else c.rjust(w)) for c, w, a in zip(cells, widths, align)
    ).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def markdown_table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    align = align or "l" + "r" * (len(header) - 1)
    marks = {"l": "---", "r": "---:"}
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def phase_table(summary: dict[str, Any]) -> str:
    header = ["path"] + [label + " (median ms)" for _, label in PHASES]
    rows = [[p] + [_fmt(summary[p][k]["median"]) for k, _ in PHASES] for p in PATHS if p in summary]
    return text_table(header, rows)


def plot(runs: list[dict[str, Any]], summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib  # heavy: loaded only to plot, and Agg chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - used as matplotlib.ticker

    paths = [p for p in PATHS if any(r["path"] == p for r in runs)]
    colors = {"fast": "#2a9d8f", "rewarmed": "#e9c46a", "cold": "#e76f51"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    for ax, (key, label) in zip(axes, METRICS):
        data = [[r[key] for r in runs if r["path"] == p and r.get(key) is not None] for p in paths]
        ax.boxplot(
            data, tick_labels=paths, widths=0.5, showfliers=False, medianprops={"color": "black", "linewidth": 1.5}
        )
        for i, (p, values) in enumerate(zip(paths, data), start=1):
            jitter = [i + (j - (len(values) - 1) / 2) * (0.25 / max(len(values), 1)) for j in range(len(values))]
            ax.scatter(jitter, values, color=colors[p], edgecolor="black", linewidth=0.5, zorder=3, s=28)
            if values:
                med = summary[p][key]["median"]
                ax.text(i + 0.29, med, f"{med:.0f}", va="center", ha="left", fontsize=8)
        target = TARGETS_MS.get(key)
        if target:
            ax.axhline(target, color="grey", linestyle="--", linewidth=1)
            ax.text(
                len(paths) + 0.45,
                target,
                f"warm-path target {target} ms",
                va="bottom",
                ha="right",
                fontsize=7,
                color="grey",
            )
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(label)
        ax.set_ylabel("ms (log scale; labels = medians)")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    ratio = summary.get("cold_over_fast", {})
    if ratio:
        fig.text(
            0.5,
            0.01,
            f"cold / fast (medians): apply start {ratio.get('apply_start_ms', 0):.1f}×, "
            f"first log {ratio.get('first_log_ms', 0):.1f}×",
            ha="center",
            fontsize=9,
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
