"""HTTP client for the agent protocol. One requests.Session per thread (Session is not
documented as thread-safe); every call retries transport errors with backoff because the
server may restart under a running agent."""

from __future__ import annotations

import threading
import time
from typing import Any

import requests


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
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

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
        delay = 0.2
        for attempt in range(retries + 1):
            try:
                resp = self.session.request(method, self.server + path, json=json, headers=headers, timeout=timeout)
            except requests.RequestException:
                if attempt == retries:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5)
                continue
            if resp.status_code >= 500 and attempt < retries:
                time.sleep(delay)
                delay = min(delay * 2, 5)
                continue
            if resp.status_code == 204:
                return None
            if resp.status_code >= 400:
                try:
                    body = resp.json()
                except ValueError:
                    body = {"detail": resp.text[:500]}
                raise ServerError(resp.status_code, str(body.get("detail", "")), body)
            return resp.content if raw else resp.json()
        raise AssertionError("unreachable")
