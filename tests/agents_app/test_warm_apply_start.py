"""How an agent starts an apply it was handed (JobRun.start, agents_app/agent/jobs.py): a
warm dir whose plan.out hashes right has `terraform apply` running before start() returns,
on the claim loop's own thread; anything else (a plan.out to restore, a failure to start)
goes on on the job's thread and is reported like any job's. Plain Python: a stand-in
terraform, a recording client, no server."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

from agents_app.agent.jobs import JobRun, WarmDir
from agents_app.agent.sandbox import Sandbox
from agents_app.agent.warmdirs import WarmPlans
from agents_app.protocol import JobPayload, SandboxMode, WarmOrigin
from tests.agents_app.test_redaction import RecordingClient, payload

PLAN = b"the reviewed plan\n"
PLAN_HASH = hashlib.sha256(PLAN).hexdigest()


class PlanServingClient(RecordingClient):
    """Serves the stored plan (GET plan-file) as the server would."""

    def call(self, method: str, path: str, *, json: Any = None, **kw: Any) -> Any:
        if path.endswith("/plan-file"):
            with self.lock:
                self.calls.append((method, path, json))
            return PLAN
        return super().call(method, path, json=json, **kw)


class Host:
    """The parts of AgentProcess a job uses, with one warm dir for run 3."""

    def __init__(self, root: Path, terraform: str, plan: bytes = PLAN) -> None:
        self.client = PlanServingClient()
        self.work_root = root / "work"
        self.terraform = terraform
        self.terraform_version = "1.11.4"
        self.sandbox = Sandbox(SandboxMode.OFF)
        self.warm_plans = WarmPlans(root / ".warm-plans", budget=0, cache=None)
        warm_dir = self.work_root / "2" / "3"
        warm_dir.mkdir(parents=True)
        (warm_dir / "plan.out").write_bytes(plan)
        self.warm = {3: WarmDir(3, warm_dir, PLAN_HASH, WarmOrigin.PLAN)}
        self.done = threading.Event()

    def take_warm(self, task_id: int) -> WarmDir | None:
        return self.warm.pop(task_id, None)

    def job_done(self, job: JobRun, keep: bool) -> None:
        self.done.set()

    def result(self) -> dict:
        assert self.done.wait(20), "the job never ended"
        return next(body for _, path, body in self.client.calls if path.endswith("/finish"))


def fake_terraform(tmp_path: Path) -> str:
    """Prints what it was asked and what plan.out holds, as `terraform apply` would print its result."""
    script = tmp_path / "terraform"
    script.write_text('#!/bin/sh\necho "ran: $*"\necho "plan: $(cat plan.out)"\necho "Apply complete!"\n')
    script.chmod(0o755)
    return str(script)


def apply_payload() -> JobPayload:
    base = payload().model_dump()
    base["kind"] = "apply"
    base["task"]["plan_hash"] = PLAN_HASH
    return JobPayload.model_validate(base)


def sent(host: Host) -> tuple[str, dict]:
    """The log text and the apply-start event, from the posts and the finish report together."""
    posts = [body for _, path, body in host.client.calls if path.endswith("/logs")]
    rest = host.result().get("log") or {}
    text = "".join(p.get("text", "") for p in posts) + rest.get("text", "")
    started = [p["events"] for p in [*posts, rest] if p.get("events", {}).get("apply_started_at")]
    assert len(started) == 1, f"one apply start event, not {started}"
    return text, started[0]


def test_a_warm_apply_is_running_when_start_returns_and_ends_as_any_job(tmp_path):
    host = Host(tmp_path, fake_terraform(tmp_path))
    job = JobRun(host, apply_payload())  # type: ignore[arg-type]
    job.start()
    assert job.proc is not None, "terraform apply was not started by start() itself"
    assert job.dir == host.work_root / "2" / "3"
    result = host.result()
    assert result["outcome"] == "succeeded", result
    text, started = sent(host)
    assert "ran: apply -input=false plan.out" in text and "plan: the reviewed plan" in text
    assert started["ack"] is True and started["apply_path"] == "fast"
    assert started["apply_started_at"] >= [c for c in result["commands"] if c["command"] == "apply"][0]["started_at"]


def test_a_warm_dir_whose_plan_out_changed_applies_the_stored_plan_from_the_jobs_thread(tmp_path):
    host = Host(tmp_path, fake_terraform(tmp_path), plan=b"tampered with\n")
    job = JobRun(host, apply_payload())  # type: ignore[arg-type]
    job.start()
    result = host.result()
    assert result["outcome"] == "succeeded", result
    text, started = sent(host)
    assert "local plan.out does not match plan_hash" in text
    assert "plan: the reviewed plan" in text and "tampered" not in text
    assert "restored from the database" in started["apply_path_reason"]
    assert [path for _, path, _ in host.client.calls if path.endswith("/plan-file")] == ["/agent/v1/jobs/7/plan-file"]


def test_an_apply_that_cannot_start_is_reported_failed_not_left_hanging(tmp_path):
    host = Host(tmp_path, str(tmp_path / "no-such-terraform"))
    job = JobRun(host, apply_payload())  # type: ignore[arg-type]
    job.start()  # the failure to start terraform must not escape into the claim loop
    result = host.result()
    assert result["outcome"] == "failed"
    assert "agent error" in result["error"] and "no-such-terraform" in result["error"]
