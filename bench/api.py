"""The REST API as the benchmark drives it (`Authorization: Token <key>`)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import requests

FINAL = {"planned", "planned_no_changes", "applied", "discarded", "cancelled", "errored"}


class RunFailed(AssertionError):
    pass


def ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def ms_between(start: str | None, end: str | None) -> float | None:
    a, b = ts(start), ts(end)
    if a is None or b is None:
        return None
    return (b - a).total_seconds() * 1000


class Api:
    def __init__(self, base_url: str, token: str) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Token {token}"

    def clone(self) -> Api:
        """Same server and user, its own HTTP session (a Session is not for sharing between threads)."""
        return Api(self.base, self.token)

    def request(self, method: str, path: str, expect: int | None = None, **kw: Any) -> requests.Response:
        resp = self.s.request(method, self.base + path, timeout=30, **kw)
        if expect is not None and resp.status_code != expect:
            raise RunFailed(f"{method} {path}: HTTP {resp.status_code} (wanted {expect}): {resp.text[:800]}")
        return resp

    def create_workspace(
        self, name: str, pool_id: int, files: dict[str, str], variables: dict[str, str], *, auto_apply: bool = False
    ) -> dict:
        ws = self.request(
            "POST", "/api/v1/workspaces/", json={"name": name, "pool": pool_id, "auto_apply": auto_apply}, expect=201
        ).json()
        self.request(
            "POST", f"/api/v1/workspaces/{ws['id']}/configuration-versions/", json={"files": files}, expect=201
        )
        for key, value in variables.items():
            self.request(
                "POST",
                f"/api/v1/workspaces/{ws['id']}/variables/",
                json={"key": key, "value": value, "category": "terraform"},
                expect=201,
            )
        return ws

    def queue(self, workspace_id: int) -> dict:
        return self.request(
            "POST", f"/api/v1/workspaces/{workspace_id}/runs/", json={"operation": "plan_and_apply"}, expect=201
        ).json()

    def run(self, run_id: int) -> dict:
        return self.request("GET", f"/api/v1/runs/{run_id}/", expect=200).json()

    def wait_longpoll(self, run_id: int, status: str, *, timeout: float = 120, until: Any = None) -> dict:
        """As `wait`, through the run's long-poll (`?wait=S&until=...`): no polling requests
        competing with the work measured. Fails at once when the run ends in another final
        status."""
        deadline = time.monotonic() + timeout
        wanted = [status, *sorted(FINAL - {status})]
        query = "&".join(f"until={s}" for s in wanted)
        while True:
            left = deadline - time.monotonic()
            run = self.request("GET", f"/api/v1/runs/{run_id}/?wait={max(1, min(left, 30)):.0f}&{query}",
                               expect=200).json()
            if run["status"] == status and (until is None or until(run)):
                return run
            if run["status"] in FINAL and run["status"] != status:
                raise RunFailed(
                    f"run {run_id} ended '{run['status']}': {run['message']}\n--- log ---\n{self.log(run_id)[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise RunFailed(f"run {run_id} still {run['status']}/{run['warmup_status']} after {timeout:g}s "
                                f"waiting for {status}")
            if run["status"] == status:
                time.sleep(0.05)  # the status is there, the rest (e.g. the warmup) not yet

    def log(self, run_id: int) -> str:
        return self.request("GET", f"/api/v1/runs/{run_id}/logs/?offset=0", expect=200).json()["text"]

    def confirm(self, run_id: int) -> dict:
        return self.request("POST", f"/api/v1/runs/{run_id}/confirm/", json={"comment": "bench"}, expect=200).json()

    def wait(
        self,
        run_id: int,
        status: str,
        *,
        timeout: float = 120,
        interval: float = 0.1,
        until: Any = None,
        what: str = "",
    ) -> dict:
        """Poll until the run has `status` and `until(run)` holds. Fails at once when the run
        ends in another final status."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["status"] == status and (until is None or until(run)):
                return run
            if run["status"] in FINAL and run["status"] != status:
                raise RunFailed(
                    f"run {run_id} ended '{run['status']}': {run['message']}\n--- log ---\n{self.log(run_id)[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise RunFailed(
                    f"run {run_id} still {run['status']}/{run['warmup_status']} "
                    f"(agent {run['warmup_agent']}) after {timeout:g}s waiting for {status} {what}: "
                    f"{run['warmup_message']}"
                )
            time.sleep(interval)
