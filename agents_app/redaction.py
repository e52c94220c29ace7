"""Masking secrets by value: the one masker of the agent and the server. Pure Python (no
Django, nothing of tasks_app: the protocol-pure import contract), so the agent imports it.

The agent knows every secret of a job (the sensitive variable values the job payload lists
and the job's own state credential, TF_HTTP_PASSWORD) and masks them before anything leaves
the machine: log text as a stream (`Redactor`), the job's error whole. The server masks again
what it stores and shows (a run's log and errors, its plan summary, the workspace's outputs,
events: `redact`, `redact_json`, `plan_summary_masked`), with the values the database holds
(tasks_app.redaction), and also anything shaped like a platform token. Both look for a value
in the same forms (`secret_forms`: as it is and JSON-escaped, longest first) and replace it
by the same marker (MASK).

A value is masked at any length, as in the log: a sensitive variable "1" hides every "1".
That is the user's choice of secret; showing it would be worse than a hard-to-read text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from agents_app.ansi import strip_ansi

MASK = "***"


def secret_forms(values: Iterable[str]) -> list[str]:
    """Every form of the values to look for, longest first (so a longer secret that contains
    a shorter one is masked whole, not around the shorter one)."""
    forms: set[str] = set()
    for value in values:
        if not value:
            continue
        forms.add(value)
        escaped = json.dumps(value)[1:-1]
        if escaped != value:
            forms.add(escaped)
        # Python escapes non-ASCII characters (above); Go, i.e. terraform, keeps them but
        # escapes <, > and & for HTML safety.
        go_escaped = json.dumps(value, ensure_ascii=False)[1:-1]
        go_escaped = go_escaped.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        forms.update(f for f in (json.dumps(value, ensure_ascii=False)[1:-1], go_escaped) if f != value)
    return sorted(forms, key=len, reverse=True)


# Platform tokens (job credentials, agent and pool tokens: agents_app.models.new_token) are
# masked wherever they appear, whichever job's they are: the server keeps only their hashes.
PLATFORM_TOKEN = re.compile(r"(?<![A-Za-z0-9])(?:job|agent|pool)-[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")


def _plain(text: str, forms: list[str]) -> str:
    for secret in forms:
        text = text.replace(secret, MASK)
    return PLATFORM_TOKEN.sub(MASK, text)


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


class Redactor:
    """The agent's masker: the job's secrets in whole texts (`redact`) and in a stream cut
    into arbitrary pieces (`feed` + `flush`): a secret split across two pieces is still
    masked. (Platform tokens are the server's pass: the agent knows its own credential.)"""

    def __init__(self, values: Iterable[str]) -> None:
        self.forms = secret_forms(values)
        self._pattern = re.compile("|".join(re.escape(f) for f in self.forms)) if self.forms else None
        # The longest secret minus one character may hide at the end of a piece, its rest
        # arriving with the next one: that much is held back until the next piece or flush.
        self._hold = max((len(f) for f in self.forms), default=1) - 1
        # A secret without a newline cannot span one, so a piece that ends a line (terraform's
        # output arrives line by line) is sent whole and nothing waits on the next line.
        self._newline_safe = not any("\n" in f for f in self.forms)
        self._tail = ""

    def redact(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)

    def feed(self, text: str) -> str:
        """The part of the stream so far that is safe to send, redacted."""
        if self._pattern is None:
            return text
        buf = self._tail + text
        cut = len(buf) - self._hold
        if self._newline_safe:
            cut = max(cut, buf.rfind("\n") + 1)
        if cut <= 0:
            self._tail = buf
            return ""
        out: list[str] = []
        pos = 0
        for match in self._pattern.finditer(buf):
            # A match starting before `cut` is complete: a secret starting there would end
            # within `buf` (cut = len(buf) - (longest - 1)). Matches from `cut` on may be the
            # start of a longer secret: they are looked at again with the next piece.
            if match.start() >= cut:
                break
            out.append(buf[pos:match.start()])
            out.append(MASK)
            pos = match.end()
        if pos < cut:
            out.append(buf[pos:cut])
            pos = cut
        self._tail = buf[pos:]
        return "".join(out)

    def flush(self) -> str:
        """The rest of the stream (at its end), redacted."""
        rest, self._tail = self._tail, ""
        return self.redact(rest)
