"""A run's log as HTML for the run page: terraform's ANSI colours become `<span class="ansiN">`
(ansi2html; the classes are styled in static/css/run.css), everything else is escaped.

The log is stored with the colour codes terraform printed (agents run the human-readable
commands with colour). Text clients (the REST API, the download, the JSON log socket) get it
without them (`strip_ansi`); only the page renders them."""

from __future__ import annotations

import re

from ansi2html import Ansi2HTMLConverter

from agents_app.ansi import strip_ansi

__all__ = ["ansi_safe_cut", "log_html", "strip_ansi"]

# An escape sequence cut at the end of a piece (its rest in the next one).
_PARTIAL_ANSI_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*)?\Z")


def log_html(text: str) -> str:
    """One piece of the log as HTML. A piece is rendered on its own (no colour state carries
    over from the previous one): terraform resets its colours at the end of each line, and
    the agent posts whole lines."""
    if not text:
        return ""
    # A converter holds per-call state: a new one each time (they are cheap) keeps this safe
    # from any thread.
    return Ansi2HTMLConverter(inline=False, escaped=True, linkify=False).convert(text, full=False)


def ansi_safe_cut(data: bytes, cut: int) -> int:
    """`cut` moved back to before an escape sequence that it would split, so that both
    pieces render (and strip) cleanly."""
    window = data[max(0, cut - 32) : cut].decode(errors="ignore")
    match = _PARTIAL_ANSI_RE.search(window)
    if match is None:
        return cut
    back = len(window[match.start() :].encode())
    return cut - back if cut - back > 0 else cut
