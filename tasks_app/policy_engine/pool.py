"""The parent side of the evaluator: warm children (tasks_app.policy_engine.child), each
serving one request at a time, bounded in time and memory.

A child that does not answer within the time bound is killed and replaced; one that dies
(a crash, or an allocation the engine could not get: Rust aborts) is replaced too. Either way the
caller gets an `EvaluatorFailure` naming the reason, never a hang. The next request finds a
fresh child already started, so one bad policy costs the next check nothing but that start.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# How often the parent looks at a busy child's memory: a comprehension growing by hundreds of
# MiB a second overshoots the bound by a fraction of that before it is stopped.
MEMORY_POLL_SECONDS = 0.02


class EvaluatorFailure(Exception):
    """The child was stopped (time) or died (memory, a crash): str() says which, for users."""


@dataclass(frozen=True)
class Limits:
    seconds: float
    memory_bytes: int


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


class Evaluator:
    """One child process. Not thread-safe: the pool hands it to one caller at a time."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.proc: subprocess.Popen | None = None
        self._buf = b""

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "HOME")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tasks_app.policy_engine.child"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        )
        self._buf = b""
        # Waits for the child's import of regorus: the price paid once per child, not per check.
        ready = self._read(deadline=time.monotonic() + max(self.limits.seconds, 30.0))
        if not ready.get("ready"):
            raise EvaluatorFailure("the policy evaluator did not start")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
        self.proc = None

    def _died(self) -> EvaluatorFailure:
        assert self.proc is not None
        code = self.proc.wait()
        self.stop()
        if code < 0 and -code in (signal.SIGABRT, signal.SIGSEGV, signal.SIGKILL):
            return EvaluatorFailure(
                f"the policy evaluator ran out of its {_mib(self.limits.memory_bytes)} memory bound and was "
                f"stopped (an exploding comprehension?); the evaluator was replaced")
        return EvaluatorFailure(f"the policy evaluator exited ({code}); it was replaced")

    def rss_bytes(self) -> int:
        """The child's resident memory. (Not RLIMIT_AS/RLIMIT_DATA: a cap on the address
        space counts what is reserved, not used, and a refused allocation aborts the Rust
        engine with no reason given: the parent watches what the child really uses.)"""
        try:
            with open(f"/proc/{self.proc.pid}/statm") as f:  # type: ignore[union-attr]
                return int(f.read().split()[1]) * PAGE_BYTES
        except (OSError, AttributeError, IndexError, ValueError):
            return 0

    def _read(self, *, deadline: float) -> dict:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise EvaluatorFailure(
                    f"stopped after {self.limits.seconds:g}s: the policy did not finish within the time bound "
                    f"(a loop or an exploding comprehension?); the evaluator was replaced")
            ready, _, _ = select.select([fd], [], [], min(left, MEMORY_POLL_SECONDS))
            if not ready:
                if self.rss_bytes() > self.limits.memory_bytes:
                    self.stop()
                    raise EvaluatorFailure(
                        f"stopped at the evaluator's {_mib(self.limits.memory_bytes)} memory bound (an exploding "
                        "comprehension?); the evaluator was replaced")
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise self._died()
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def request(self, req: dict) -> dict:
        if not self.alive:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(req).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._died() from None
        answer = self._read(deadline=time.monotonic() + self.limits.seconds)
        if answer.get("memory"):
            self.stop()
            raise EvaluatorFailure(
                f"the policy ran out of the evaluator's {_mib(self.limits.memory_bytes)} memory bound; "
                "the evaluator was replaced")
        return answer


class EvaluatorPool:
    """Warm evaluators shared by a process's threads (a Celery worker's): each request takes
    an idle one (or starts one, up to `size`), and puts it back started. A child replaced
    after a failure is started again at once, off the failed check's clock."""

    def __init__(self, limits: Limits, size: int = 2) -> None:
        self.limits = limits
        self.size = size
        self._idle: list[Evaluator] = []
        self._count = 0
        self._cond = threading.Condition()

    def warm(self) -> None:
        """Start one evaluator now (a worker's start), so the first check finds it ready."""
        ev = self._take()
        try:
            if not ev.alive:
                ev.start()
        finally:
            self._give(ev)

    def _take(self) -> Evaluator:
        with self._cond:
            while not self._idle and self._count >= self.size:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
            return Evaluator(self.limits)

    def _give(self, ev: Evaluator) -> None:
        with self._cond:
            self._idle.append(ev)
            self._cond.notify()

    def request(self, req: dict) -> dict:
        ev = self._take()
        try:
            return ev.request(req)
        finally:
            if not ev.alive:
                try:
                    ev.start()  # the replacement, ready for the next check
                except Exception:  # noqa: BLE001 - started again on its next request
                    ev.stop()
            self._give(ev)

    def check(self, modules: dict[str, str]) -> dict[str, str]:
        """Compile each module: {name: error text} for those that do not."""
        return self.request({"op": "check", "modules": modules})["errors"]

    def evaluate(self, *, key: str, modules: dict[str, str], input_json: str) -> dict[str, Any]:
        """The virtual document of `modules` for this input; raises EvaluatorFailure (time,
        memory) or returns {"error": ...} for a Rego error."""
        answer = self.request({"op": "eval", "key": key, "modules": modules, "input": input_json})
        if not answer.get("ok"):
            return {"error": answer.get("error", "evaluation failed")}
        return {"document": answer["document"]}

    def close(self) -> None:
        with self._cond:
            for ev in self._idle:
                ev.stop()
            self._idle.clear()
            self._count = 0
