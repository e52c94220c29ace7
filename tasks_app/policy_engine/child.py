"""The evaluator's child process: `python -m tasks_app.policy_engine.child`.

Reads requests from stdin and writes answers to stdout, each one line of JSON. It runs
regorus (Microsoft's Rego interpreter in Rust, from the `gordon-to-regorus` wheel) and holds
one engine per policy set it was given (by their sha256), its modules parsed: a check of a
set it has seen only sets the input (from the JSON text, parsed in Rust) and evaluates
`data`. Time and memory are bounded by the parent (tasks_app.policy_engine.pool), which kills
a child that does not answer in time or grows past the memory bound: a policy that loops or
explodes takes this process down, never the worker that owns it. The engine's own
diagnostics (printed on stdout) go to /dev/null; the structured error is read instead.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import OrderedDict
from typing import Any

import regorus  # loaded once per child: what keeps a check of a small plan in milliseconds

# Engines kept per child: a platform has a handful of policy sets; a changed set has a new
# sha256 and its old engine falls out of the cache.
BUNDLES_KEPT = 32

# regorus's errors: `--> <file>:<line>:<col>`, the source line with a caret, `error: <message>`
# (several such blocks when one error explains another), then a backtrace when RUST_BACKTRACE
# is set.
_ERROR = re.compile(r"-->\s*(?P<file>[^\n]*?):(?P<line>\d+):(?P<col>\d+)\s*\n(?:[^\n]*\n)*?\s*error:\s*(?P<msg>[^\n]*)")
_OPENERS = {"{": "}", "[": "]", "(": ")"}
# regorus's parser takes time exponential in the nesting of arrays and objects (an array
# nested 20 deep: 0.5 s, 24 deep: 10 s): a module nesting brackets deeper than this is
# refused before it reaches the parser (16 deep: under 0.1 s).
MAX_NESTING = 16


def _brackets(text: str) -> tuple[tuple[int, int, int] | None, tuple[int, int, str] | None]:
    """Where a module first nests brackets past MAX_NESTING (line, col, depth), and the
    innermost bracket left open at its end (line, col, bracket); strings and comments
    skipped."""
    stack: list[tuple[int, int, str]] = []
    too_deep = None
    line, line_start, i, n = 1, 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line, line_start = line + 1, i + 1
        elif c == "#":
            end = text.find("\n", i)
            i = (n if end < 0 else end) - 1
        elif c in "\"`":
            i += 1
            while i < n and text[i] != c and (c == "`" or text[i] != "\n"):
                if c == '"' and text[i] == "\\":
                    i += 1
                elif text[i] == "\n":
                    line, line_start = line + 1, i + 1
                i += 1
            if i < n and text[i] == "\n":  # an unterminated string ends at its line
                line, line_start = line + 1, i + 1
        elif c in _OPENERS:
            stack.append((line, i - line_start + 1, c))
            if too_deep is None and len(stack) > MAX_NESTING:
                too_deep = (line, i - line_start + 1, len(stack))
        elif c in _OPENERS.values() and stack and _OPENERS[stack[-1][2]] == c:
            stack.pop()
        i += 1
    return too_deep, (stack[-1] if stack else None)


class TooDeep(Exception):
    """A module nests brackets past MAX_NESTING: refused before regorus parses it."""


def error_text(raw: str, modules: dict[str, str]) -> str:
    """regorus's error as `file:line:col: message` lines (the shape OPA's errors have)."""
    raw = raw.split("Stack backtrace:")[0]
    lines: list[str] = []
    for m in _ERROR.finditer(raw):
        name, message = m.group("file").strip(), m.group("msg").strip()
        text = modules.get(name)
        if text is not None and "expecting" in message and int(m.group("line")) >= text.count("\n") + (
                not text.endswith("\n")):
            opened = _brackets(text)[1]
            if opened is not None:
                message += f" (the `{opened[2]}` at {name}:{opened[0]}:{opened[1]} is unclosed)"
        lines.append(f"{name}:{m.group('line')}:{m.group('col')}: {message}")
    return "\n".join(dict.fromkeys(lines)) or " ".join(raw.split())[:2000]


class Child:
    def __init__(self) -> None:
        self.engines: OrderedDict[str, Any] = OrderedDict()
        self.last: Any = None  # the engine that holds the last check's input

    @staticmethod
    def _engine(modules: dict[str, str]) -> Any:
        engine = regorus.Engine()
        # regorus's own caps (1,024 columns, 20,000 lines) refuse modules OPA takes (a long
        # allow-list on one line); the platform caps a module's size (IAC_POLICY_MAX_MODULE_BYTES).
        engine.set_policy_length_config(max_col=1 << 20, max_file_bytes=1 << 26, max_lines=1 << 20)
        for name, text in modules.items():
            too_deep = _brackets(text)[0]
            if too_deep is not None:
                raise TooDeep(f"{name}:{too_deep[0]}:{too_deep[1]}: brackets nested {too_deep[2]} deep (at most "
                              f"{MAX_NESTING}: the engine's parser takes time exponential in the nesting)")
            engine.add_policy(name, text)
        return engine

    def check(self, req: dict) -> dict:
        """Parse each module on its own: the errors of each, by name."""
        errors: dict[str, str] = {}
        for name, text in req["modules"].items():
            try:
                self._engine({name: text})
            except Exception as exc:  # noqa: BLE001 - regorus raises RuntimeError (anyhow's error)
                errors[name] = error_text(str(exc), {name: text})
            except BaseException as exc:  # a Rust panic (pyo3's PanicException): the module is refused
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                errors[name] = f"{name}: the engine failed on this module ({' '.join(str(exc).split())[:500]})"
        return {"ok": True, "errors": errors}

    def evaluate(self, req: dict) -> dict:
        """Set the input and query `data` through the set's engine: every package's rules in
        one pass. The answer is the virtual document (the caller picks each policy's deny
        and warn out of it)."""
        key, modules = req["key"], req["modules"]
        engine = self.engines.get(key)
        try:
            if engine is None:
                engine = self._engine(modules)
                self.engines[key] = engine
                while len(self.engines) > BUNDLES_KEPT:
                    self.engines.popitem(last=False)
            else:
                self.engines.move_to_end(key)
            self.last = engine
            engine.set_input_json(req["input"])
            # As JSON: a set comes back as a list (OPA's JSON form), not a Python set.
            results = json.loads(engine.eval_query_as_json("data")).get("result") or []
        except Exception as exc:  # noqa: BLE001 - a parse error, or a runtime error (conflicting values, a builtin's)
            self.engines.pop(key, None)
            return {"ok": False, "error": error_text(str(exc), modules)}
        except BaseException as exc:  # a Rust panic (pyo3's PanicException): that engine is not reused
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self.engines.pop(key, None)
            self.last = None
            return {"ok": False, "error": f"the engine failed evaluating this set ({' '.join(str(exc).split())[:500]})"}
        expressions = results[0].get("expressions", []) if results else []
        return {"ok": True, "document": expressions[0].get("value", {}) if expressions else {}}

    def release(self) -> None:
        """Drop the last check's input once its answer is out, so a large plan's tree is not
        held (and freed by the next check, a small plan's) while the child waits."""
        if self.last is not None:
            self.last.set_input_json("{}")
            self.last = None


def main() -> None:
    # regorus prints some diagnostics on stdout: the answers go out on a copy of it, and the
    # process's own fd 1 points at /dev/null.
    out = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    child = Child()
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            answer = child.check(req) if req["op"] == "check" else child.evaluate(req)
        except MemoryError:
            answer = {"ok": False, "error": "memory", "memory": True}
        except Exception as exc:  # noqa: BLE001 - an answer, never a dead child for a bad request
            answer = {"ok": False, "error": f"evaluator error: {exc}"}
        except BaseException as exc:  # a Rust panic (pyo3's PanicException is a BaseException)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            answer = {"ok": False, "error": f"evaluator error: the engine panicked: {exc}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
        try:
            child.release()
        except Exception:  # noqa: BLE001, S110 - the next check sets its own input anyway
            pass


if __name__ == "__main__":
    main()
