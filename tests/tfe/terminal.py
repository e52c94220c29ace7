"""The real terraform CLI in a pseudo-terminal, for the prompts it shows only to a person
(`Enter a value:`), and Ctrl-C as a terminal sends it (the pty is its controlling terminal)."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import termios
import threading
import time
from pathlib import Path


class Terminal:
    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        master, slave = os.openpty()

        def controlling_terminal() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     preexec_fn=controlling_terminal, close_fds=True)
        os.close(slave)
        self.master = master
        self.output = ""
        self._seen = 0
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            with self._lock:
                self.output += data.decode(errors="replace").replace("\r\n", "\n")

    def expect(self, pattern: str, timeout: float = 120) -> re.Match:
        """Wait for `pattern` (a regex) in the output after the last match."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = re.compile(pattern).search(self.output, self._seen)
            if found:
                self._seen = found.end()
                return found
            if time.monotonic() > deadline or (self.proc.poll() is not None and not self._reader.is_alive()):
                raise AssertionError(f"no {pattern!r} in terraform's output:\n{self.output}")
            time.sleep(0.05)

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait(self, timeout: float = 180) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        os.close(self.master)
        return code
