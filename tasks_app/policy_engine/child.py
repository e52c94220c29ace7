"""The evaluator's child process: `python -m tasks_app.policy_engine.child`.

Reads requests from stdin and writes answers to stdout, each one line of JSON. It holds
compiled bundles of the policy sets it was given (by their sha256), so a check of a set it
has seen only sets the input and runs the compiled plan. Time and memory are bounded by the
parent (tasks_app.policy_engine.pool), which kills a child that does not answer in time or
grows past the memory bound: a policy that loops or explodes takes this process down, never
the worker that owns it. rego-cpp's own diagnostics (printed on
stdout and stderr) go to /dev/null; the structured error is read instead.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import OrderedDict
from typing import Any

import regopy  # loaded once per child: what keeps a check of a small plan in milliseconds

# Compiled sets kept per child: a platform has a handful of policy sets; a changed set has a
# new sha256 and its old bundle falls out of the cache.
BUNDLES_KEPT = 32

# rego-cpp's errors are s-expressions: (error <len>:<file>|<offset>|<length> (errormsg <len>:<text>) ...)
_ERROR = re.compile(r"\(error \d+:(?P<file>[^|]*)\|(?P<offset>\d+)\|\d+\s*\(errormsg (?P<len>\d+):")


def error_text(raw: str, modules: dict[str, str]) -> str:
    """rego-cpp's error as `file:line:col: message` lines (the shape OPA's errors have)."""
    lines: list[str] = []
    for m in _ERROR.finditer(raw):
        start = m.end()
        message = raw[start:start + int(m.group("len"))]
        name, offset = m.group("file"), int(m.group("offset"))
        text = modules.get(name)
        if text is not None and offset <= len(text):
            line = text.count("\n", 0, offset) + 1
            col = offset - (text.rfind("\n", 0, offset) + 1) + 1
            lines.append(f"{name}:{line}:{col}: {message}")
        else:
            lines.append(f"{name}: {message}" if name else message)
    return "\n".join(dict.fromkeys(lines)) or raw.strip()[:2000]


class Child:
    def __init__(self) -> None:
        self.regopy = regopy
        self.bundles: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self.last: Any = None  # the interpreter that holds the last check's input

    def _interpreter(self, modules: dict[str, str]) -> Any:
        interpreter = self.regopy.Interpreter()
        for name, text in modules.items():
            interpreter.add_module(name, text)
        return interpreter

    def check(self, req: dict) -> dict:
        """Compile each module on its own: the errors of each, by name."""
        errors: dict[str, str] = {}
        for name, text in req["modules"].items():
            try:
                self._interpreter({name: text}).build("data")
            except self.regopy.RegoError as exc:
                errors[name] = error_text(str(exc), {name: text})
        return {"ok": True, "errors": errors}

    def evaluate(self, req: dict) -> dict:
        """Set the input and query `data` through the set's compiled bundle: every package's
        rules in one pass. The answer is the virtual document (the caller picks each
        policy's deny and warn out of it)."""
        key, modules = req["key"], req["modules"]
        cached = self.bundles.get(key)
        try:
            if cached is None:
                interpreter = self._interpreter(modules)
                cached = (interpreter, interpreter.build("data"))
                self.bundles[key] = cached
                while len(self.bundles) > BUNDLES_KEPT:
                    self.bundles.popitem(last=False)
            else:
                self.bundles.move_to_end(key)
            interpreter, bundle = cached
            self.last = interpreter
            interpreter.set_input(self.regopy.Input(json.loads(req["input"])))
            output = interpreter.query_bundle(bundle)
            if not output.ok():
                # rego-cpp's runtime errors carry no text through regopy 1.5.2.
                return {"ok": False, "error": "evaluation error (a rule given two different values, a builtin "
                                              "called with bad arguments, or another runtime error)"}
            # The values as Python objects (Output's text form does not always escape strings).
            results = output.results
        except self.regopy.RegoError as exc:
            self.bundles.pop(key, None)
            return {"ok": False, "error": error_text(str(exc), modules)}
        except ValueError:
            # regopy reads the values back from rego-cpp's JSON text, in which the quotes that
            # sprintf's %v puts around a string are not escaped.
            return {"ok": False, "error": "the policy's result could not be read back from the engine (rego-cpp "
                                          "1.5.2 leaves the quotes sprintf's %v puts around a string unescaped: "
                                          "format strings with %s)"}
        expressions = results[0].expressions if results else []
        return {"ok": True, "document": expressions[0] if expressions else {}}


    def release(self) -> None:
        """Drop the last check's input once its answer is out: freeing a large plan's tree
        takes tens of milliseconds, which the next check (a small plan's) would pay."""
        if self.last is not None:
            self.last.set_input(self.regopy.Input({}))
            self.last = None


def main() -> None:
    # rego-cpp prints its diagnostics on stdout: the answers go out on a copy of it, and the
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
        out.write(json.dumps(answer) + "\n")
        out.flush()
        try:
            child.release()
        except Exception:  # noqa: BLE001, S110 - the next check sets its own input anyway
            pass


if __name__ == "__main__":
    main()
