"""Terraform's colour codes, shared by the agent (which checks terraform's output without
them) and the server (which shows the log without them to text clients). Pure Python: the
agent imports it and has no Django."""

from __future__ import annotations

import re

# CSI sequences (colours, cursor moves) and the two-byte escapes: what terraform and the
# programs it runs print. Terraform's colours are SGR (`ESC [ ... m`).
ANSI_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")


def strip_ansi(text: str) -> str:
    return ANSI_RE.sub("", text) if "\x1b" in text else text
