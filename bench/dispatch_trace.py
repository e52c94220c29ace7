"""How far one agent report travels through the code: a runtime trace (`sys.setprofile`) of one
succeeded plan result, from the agent API's view (`POST /agent/v1/jobs/<id>/finish`, the plan
inline, as the agent sends it) to the commit, on a fresh database.

Prints the project functions called, the project modules entered, and the crossings between
the two apps (a call whose nearest project caller is in the other app, `tasks_app` <->
`agents_app`); calls into `iacplatform` (the shared plumbing: wake-ups, live sends, crypto)
are counted apart. docs/architecture.md ("Where dispatch lives") keeps the figures before and
after dispatch moved into `tasks_app/dispatch/`.

    .venv/bin/python -m bench.dispatch_trace [--list]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from collections import Counter
from types import FrameType
from typing import Any

from bench.live import bench_platform

APPS = ("tasks_app", "agents_app", "iacplatform")


def _app(module: str) -> str | None:
    top = module.partition(".")[0]
    return top if top in APPS else None


class Trace:
    """Counts project calls and the app boundaries they cross."""

    def __init__(self) -> None:
        self.calls = 0
        self.modules: Counter[str] = Counter()
        self.crossings: Counter[tuple[str, str]] = Counter()
        self.path: list[str] = []

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        app = _app(module)
        if app is None:
            return
        self.calls += 1
        self.modules[module] += 1
        caller = frame.f_back
        while caller is not None and _app(caller.f_globals.get("__name__", "")) is None:
            caller = caller.f_back
        if caller is None:
            return
        caller_module = caller.f_globals["__name__"]
        caller_app = _app(caller_module)
        if caller_app != app:
            self.crossings[(caller_app or "", app)] += 1
            self.path.append(f"{caller_module}.{caller.f_code.co_name} -> {module}.{frame.f_code.co_name}")

    def between_apps(self) -> int:
        return sum(n for (a, b), n in self.crossings.items() if {a, b} == {"tasks_app", "agents_app"})

    def into_plumbing(self) -> int:
        return sum(n for (a, b), n in self.crossings.items() if b == "iacplatform")


def _post(client: Any, path: str, body: dict, token: str, fence: int | None = None) -> Any:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    if fence is not None:
        headers["HTTP_X_JOB_FENCE"] = str(fence)
    return client.post(path, json.dumps(body), content_type="application/json", **headers)


def traced_plan_result() -> Trace:
    """A pool, an agent, a workspace and a run whose plan job the agent claimed; then the
    traced finish report with its plan."""
    from django.test import Client

    from agents_app.protocol import PROTOCOL_VERSION
    from agents_app.services.agents import pool_create
    from tasks_app.models import Workspace
    from tasks_app.services.configs import configuration_create_from_files
    from tasks_app.services.runs import run_create

    client = Client(HTTP_HOST="localhost")
    pool, pool_token = pool_create(name="trace", backend="static")
    ws = Workspace.objects.create(pool=pool, name="trace")
    configuration_create_from_files(workspace=ws, files={"main.tf": 'resource "null_resource" "x" {}\n'}, actor=None)
    reg = _post(client, "/agent/v1/register", {"name": "a1", "slots": 3, "protocol_version": PROTOCOL_VERSION,
                                               "terraform_version": "1.11.4"}, pool_token)
    assert reg.status_code == 201, reg.content
    token = reg.json()["token"]
    run_create(workspace=ws, operation="plan", actor="trace")
    claimed = _post(client, "/agent/v1/claim?wait=0&max=1", {}, token)
    assert claimed.status_code == 200, claimed.content
    job = claimed.json()["jobs"][0]
    plan = b"PK-a-plan-file"
    body = {
        "outcome": "succeeded", "kept_dir": True, "log": {"seq": 1, "text": "Plan: 1 to add\n"},
        "plan": {"plan_b64": base64.b64encode(plan).decode(), "sha256": hashlib.sha256(plan).hexdigest(),
                 "summary": {"add": 1, "change": 0, "destroy": 0, "resources": []}, "has_changes": True},
    }
    trace = Trace()
    sys.setprofile(trace)
    try:
        resp = _post(client, f"/agent/v1/jobs/{job['id']}/finish", body, token, fence=job["fence"])
    finally:
        sys.setprofile(None)
    assert resp.status_code == 200, resp.content
    return trace


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print every crossing and the modules entered")
    args = parser.parse_args()
    live = bench_platform(db_name="iac_trace", subdir="bench-trace", say=lambda text: None)
    live.setup_django()
    live.migrate()
    trace = traced_plan_result()
    if args.list:
        for line in trace.path:
            print(line)
        for module, n in sorted(trace.modules.items()):
            print(f"{n:6d}  {module}")
    print(f"plan result: {trace.calls} project calls in {len(trace.modules)} modules; "
          f"crossings between tasks_app and agents_app: {trace.between_apps()} "
          f"({', '.join(f'{a}->{b} {n}' for (a, b), n in sorted(trace.crossings.items()) if 'iacplatform' not in (a, b))}); "
          f"calls into iacplatform: {trace.into_plumbing()}")
    print(f"modules_entered={len(trace.modules)} app_crossings={trace.between_apps()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
