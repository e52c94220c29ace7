"""HTTP client for the agent protocol. Sessions (requests.Session is not documented as
thread-safe) serve one call at a time and are then reused by whichever thread calls next:
a job's thread and its log stream's are new for every job, and with a session of their own
each opened a new connection for its first call (a job's result among them); an idle
session's connection is kept alive. One retry policy per session.

The server may restart under a running agent (web restarted by its supervisor, PostgreSQL
restarting: web then answers 503 with Retry-After), so calls are retried by urllib3's
`Retry`: transport errors and 5xx answers, with exponential backoff (0.2 s doubling, at
most 5 s, a little jitter), and as long as a 503's Retry-After says. Every agent call may
be repeated: job calls carry the job's fence, log posts their sequence number, and the
server answers a repeated finish or plan upload by the job's state."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

RETRY_STATUSES = (500, 502, 503, 504)


def retry_policy(retries: int) -> Retry:
    return Retry(
        total=retries,
        allowed_methods=None,  # every method: see the module's docstring
        status_forcelist=RETRY_STATUSES,
        backoff_factor=0.2,
        backoff_max=5,
        backoff_jitter=0.1,
        respect_retry_after_header=True,
        raise_on_status=False,  # the last answer is returned, and becomes a ServerError below
    )


class ServerError(Exception):
    def __init__(self, status: int, detail: str, body: dict | None = None) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.body = body or {}


class Client:
    def __init__(self, server: str) -> None:
        self.server = server.rstrip("/")
        self.token = ""
        self._lock = threading.Lock()
        self._idle: dict[int, list[requests.Session]] = {}  # by retries: sessions no call uses now

    @contextmanager
    def session(self, retries: int = 5) -> Iterator[requests.Session]:
        """A session for one call retried `retries` times: an idle one (its connection kept
        alive), or a new one; idle again afterwards."""
        with self._lock:
            idle = self._idle.setdefault(retries, [])
            s = idle.pop() if idle else None
        if s is None:
            s = requests.Session()
            adapter = HTTPAdapter(max_retries=retry_policy(retries))
            s.mount("http://", adapter)
            s.mount("https://", adapter)
        try:
            yield s
        finally:
            with self._lock:
                self._idle[retries].append(s)

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        token: str | None = None,
        fence: int | None = None,
        timeout: float = 30,
        retries: int = 5,
        raw: bool = False,
    ) -> Any:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        if fence is not None:
            headers["X-Job-Fence"] = str(fence)
        with self.session(retries) as session:  # (the answer is read in full before it is idle again)
            resp = session.request(method, self.server + path, json=json, headers=headers, timeout=timeout)
        if resp.status_code == 204:
            return None
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"detail": resp.text[:500]}
            raise ServerError(resp.status_code, str(body.get("detail", "")), body)
        return resp.content if raw else resp.json()
