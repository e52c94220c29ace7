"""A fake agent process: speaks the agent protocol over the Django test client, the way
agents_app.agent does, without terraform. For protocol and dispatch tests."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import timedelta

from django.test import Client
from django.utils import timezone

from agents_app.models import Agent
from agents_app.protocol import PROTOCOL_VERSION
from tasks_app.dispatch.models import Slot
from tasks_app.models import Task
from tasks_app.services.runs import run_create

PLAN = b"PK-fake-plan-bytes"


class FakeAgent:
    """Speaks the agent protocol the way agents_app.agent does."""

    def __init__(self, client: Client, pool_token: str, name: str, *, slots: int = 3,
                 terraform_version: str = "1.11.4") -> None:
        self.c = client
        self.pool_token = pool_token
        self.name = name
        self.slots = slots
        self.terraform_version = terraform_version
        resp = self.register()
        assert resp.status_code == 201, resp.content
        self.token = resp.json()["token"]
        self.id = resp.json()["agent_id"]
        # As good as heartbeating for the next ten minutes: it sends no heartbeats of its own,
        # and the sweep of a live platform sharing the test database (the worker's e2e
        # session) declares an agent silent after 4 s, which a slow test on a loaded machine
        # outlasts. Tests of silence set the time themselves, or take the agent offline.
        Agent.objects.filter(id=self.id).update(last_heartbeat_at=timezone.now() + timedelta(minutes=10))

    def register(self, **extra):
        body = {"name": self.name, "slots": self.slots, "protocol_version": PROTOCOL_VERSION,
                "terraform_version": self.terraform_version, **extra}
        return self.post("/agent/v1/register", body, token=self.pool_token)

    def post(self, path: str, body: dict | None = None, token: str | None = None, fence: int | None = None):
        headers = {"HTTP_AUTHORIZATION": f"Bearer {token or self.token}"}
        if fence is not None:
            headers["HTTP_X_JOB_FENCE"] = str(fence)
        return self.c.post(path, json.dumps(body or {}), content_type="application/json", **headers)

    def claim(self) -> dict | None:
        jobs = self.claim_many(1)
        return jobs[0] if jobs else None

    def claim_many(self, limit: int) -> list[dict]:
        resp = self.post(f"/agent/v1/claim?wait=0&max={limit}")
        assert resp.status_code in (200, 204), resp.content
        return resp.json()["jobs"] if resp.status_code == 200 else []

    def plan(self, job: dict, *, changes: bool = True, keep: bool = True) -> dict:
        digest = hashlib.sha256(PLAN).hexdigest()
        resp = self.post(f"/agent/v1/jobs/{job['id']}/plan", {
            "plan_b64": base64.b64encode(PLAN).decode(), "sha256": digest,
            "summary": {"add": 1, "change": 0, "destroy": 0, "resources": []}, "has_changes": changes,
        }, fence=job["fence"])
        assert resp.status_code == 201, resp.content
        return self.finish(job, kept_dir=keep).json()

    def ack(self, job: dict):
        """What the agent sends as it starts terraform apply: an `ack` log event."""
        return self.post(f"/agent/v1/jobs/{job['id']}/logs", {"seq": 1, "events": {"ack": True}}, fence=job["fence"])

    def finish(self, job: dict, outcome: str = "succeeded", **result):
        return self.post(f"/agent/v1/jobs/{job['id']}/finish", {"outcome": outcome, **result}, fence=job["fence"])


def reservation(task: Task) -> Slot | None:
    return Slot.objects.filter(task=task, state="reserved").first()


def apply_pending(setup, agent: FakeAgent) -> Task:
    _, _, ws = setup
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    job = agent.claim()
    assert job["kind"] == "plan" and job["keep_dir"] is True
    assert agent.plan(job) == {"keep_dir": True}
    task.refresh_from_db()
    assert task.status == "apply_pending"
    return task
