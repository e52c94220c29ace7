"""A user of the platform, as automation sees it: the REST API over real HTTP."""

from __future__ import annotations

import time
from typing import Any

import requests


class PlatformUser:
    def __init__(self, base_url: str, token: str) -> None:
        self.base = base_url.rstrip("/")
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Token {token}"

    def request(self, method: str, path: str, expect: int | None = None, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 30)
        resp = self.s.request(method, self.base + path, **kw)
        if expect is not None:
            assert resp.status_code == expect, f"{method} {path}: {resp.status_code} {resp.text[:500]}"
        return resp

    def create_workspace(self, name: str, pool_id: int, files: dict[str, str], variables: dict[str, str] | None = None,
                         **fields: Any) -> dict:
        ws = self.request("POST", "/api/v1/workspaces/", json={"name": name, "pool": pool_id, **fields}, expect=201).json()
        self.request("POST", f"/api/v1/workspaces/{ws['id']}/configuration-versions/", json={"files": files}, expect=201)
        for key, value in (variables or {}).items():
            self.request("POST", f"/api/v1/workspaces/{ws['id']}/variables/",
                         json={"key": key, "value": value, "category": "terraform"}, expect=201)
        return ws

    def queue(self, workspace_id: int, operation: str = "plan_and_apply") -> dict:
        return self.request("POST", f"/api/v1/workspaces/{workspace_id}/runs/", json={"operation": operation},
                            expect=201).json()

    def run(self, run_id: int) -> dict:
        return self.request("GET", f"/api/v1/runs/{run_id}/", expect=200).json()

    def wait(self, run_id: int, *statuses: str, timeout: float = 90, warmup: str | None = None) -> dict:
        """Wait until the run is in one of `statuses` (and, if given, its warmup in `warmup`).
        Fails fast when the run reaches a final status that was not asked for."""
        final = {"planned", "planned_no_changes", "applied", "discarded", "cancelled", "errored"}
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["status"] in statuses and (warmup is None or run["warmup_status"] == warmup):
                return run
            if run["status"] in final and run["status"] not in statuses:
                raise AssertionError(f"run {run_id} ended {run['status']}: {run['message']}\n{self.log(run_id)}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"run {run_id} still {run['status']}/{run['warmup_status']} after {timeout}s "
                    f"(wanted {statuses}, warmup {warmup}): {run['warmup_message']}"
                )
            time.sleep(0.1)

    def confirm(self, run_id: int) -> requests.Response:
        return self.request("POST", f"/api/v1/runs/{run_id}/confirm/", json={"comment": "looks good"})

    def log(self, run_id: int) -> str:
        return self.request("GET", f"/api/v1/runs/{run_id}/logs/?offset=0", expect=200).json()["text"]
