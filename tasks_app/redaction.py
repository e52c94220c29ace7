"""Masking secrets by value in whatever the server shows: a run's log and errors, its plan
summary, the workspace's outputs, events. The one masker of the server; the agent masks what
it sends with agents_app.agent.redact, whose `secret_forms` (each value as it is and
JSON-escaped, longest first) and MASK this module shares, so a value is looked for in the
same forms and replaced by the same marker on both sides.

A value is masked at any length, as in the log: a sensitive variable "1" hides every "1".
That is the user's choice of secret; showing it would be worse than a hard-to-read text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from agents_app.agent.redact import MASK, secret_forms
from tasks_app.logrender import strip_ansi

__all__ = ["MASK", "plan_summary_masked", "redact", "redact_json"]

# Platform tokens (job credentials, agent and pool tokens: agents_app.models.new_token) are
# masked wherever they appear, whichever job's they are: the server keeps only their hashes.
_TOKEN = re.compile(r"(?<![A-Za-z0-9])(?:job|agent|pool)-[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")


def _plain(text: str, forms: list[str]) -> str:
    for secret in forms:
        text = text.replace(secret, MASK)
    return _TOKEN.sub(MASK, text)


def _text(text: str, forms: list[str]) -> str:
    """Terraform's output carries colour codes: a secret with a code in the middle of it (a
    colour change inside a value) would escape a plain search, so if the text without its
    codes still shows a secret, the text loses its colours and is masked without them."""
    if not text:
        return text
    masked = _plain(text, forms)
    if "\x1b" in masked:
        plain = strip_ansi(masked)
        if _plain(plain, forms) != plain:
            return _plain(plain, forms)
    return masked


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with the secrets (sensitive variable values) and platform tokens masked."""
    if not text:
        return text
    return _text(text, secret_forms(secrets))


def redact_json(value: Any, secrets: Iterable[str]) -> Any:
    """A copy of a JSON structure (a plan summary, an output's value) with the secrets and
    platform tokens masked in every string, every key, and every number or boolean whose
    JSON text is a secret (a sensitive "5432" used as a port)."""
    forms = secret_forms(secrets)
    whole = set(forms)

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return _text(node, forms)
        if isinstance(node, dict):
            return {(_text(k, forms) if isinstance(k, str) else k): walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, bool | int | float) and json.dumps(node) in whole:
            return MASK
        return node

    return walk(value)


def plan_summary_masked(summary: Any, secrets: Iterable[str]) -> Any:
    """A plan summary (agents_app.agent.jobs.plan_summary) with the secrets masked in what
    the configuration shaped (resource addresses, attribute diffs, output names); its counts
    stay numbers."""
    if not isinstance(summary, dict):
        return summary
    counts = {k: v for k, v in summary.items() if isinstance(v, int) and not isinstance(v, bool)}
    return {**redact_json({k: v for k, v in summary.items() if k not in counts}, secrets), **counts}
