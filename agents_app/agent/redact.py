"""Redacting secrets from what the agent sends: log chunks, job errors.

The agent knows every secret of a job (the sensitive variable values the job payload lists
and the job's own state credential, TF_HTTP_PASSWORD), so it redacts before anything leaves
the machine; the server redacts again. A value is redacted as it is and in its JSON-escaped
form (a value with a quote or a backslash appears escaped in `terraform show -json` and in
JSON that user code prints).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

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


class Redactor:
    """Masks secrets in whole texts (`redact`) and in a stream cut into arbitrary pieces
    (`feed` + `flush`): a secret split across two pieces is still masked."""

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
