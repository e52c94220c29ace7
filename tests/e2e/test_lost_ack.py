"""Acknowledgements lost on the network: the apply runs once, and its lock is released.

The agent acknowledges an apply as a log event, without waiting for the answer, and starts
terraform. If that event is lost, the server must not hand the running apply to another
agent: the agent's heartbeats report the job, and that counts as its acknowledgement."""

from __future__ import annotations

import json
import re
import time

import pytest

from tasks_app.dispatch.models import Job
from tasks_app.models import StateLock
from tests.factories import DEMO_MAIN_TF
from tests.netfault import LossyProxy

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# The demo config, with an apply that runs longer than the ack timeout (2 s in the tests)
# and a change in every plan.
SLOW_APPLY_TF = DEMO_MAIN_TF.replace('command = "echo', 'command = "sleep 4; echo').replace(
    "input = var.greeting", "input = var.greeting\n  triggers_replace = timestamp()")

_LOGS = re.compile(r"^/agent/v1/jobs/\d+/logs$")


class DropAcks:
    """Drops every log post carrying an acknowledgement for `seconds` after the first one."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.first: float | None = None

    def __call__(self, method: str, path: str, body: bytes) -> bool:
        if method != "POST" or not _LOGS.match(path):
            return False
        try:
            acked = json.loads(body).get("events", {}).get("ack", False)
        except ValueError:
            return False
        if not acked and self.first is None:
            return False
        now = time.monotonic()
        if self.first is None:
            self.first = now
        return now - self.first < self.seconds


def test_acks_dropped_for_5s_lead_to_one_apply_and_no_orphaned_lock(scenario, live_url):
    assert "sleep 4" in SLOW_APPLY_TF and "timestamp()" in SLOW_APPLY_TF
    s = scenario(files={"main.tf": SLOW_APPLY_TF})
    with LossyProxy(live_url, DropAcks(5)) as net:
        a1 = s.agent("a1", server=net.url)
        run = s.user.queue(s.workspace["id"])
        s.user.wait(run["id"], "apply_pending", warmup="ready", timeout=120)
        s.agent("a2")  # free slots elsewhere: where a wrongly re-queued apply would go
        assert s.user.confirm(run["id"]).status_code == 200
        done = s.user.wait(run["id"], "applied", timeout=120)

    assert net.dropped, "the test network dropped no acknowledgement"
    assert s.applies() == 1
    job = Job.objects.get(task_id=run["id"], kind="apply")
    assert job.agent.name == a1.name and job.fence == 1, "the apply was handed to another agent"
    assert done["apply_path"] == "fast"
    assert not StateLock.objects.filter(workspace_id=s.workspace["id"]).exists()
    # The next run of the workspace locks the state and applies.
    second = s.user.queue(s.workspace["id"])
    s.user.wait(second["id"], "apply_pending", timeout=120)
    assert s.user.confirm(second["id"]).status_code == 200
    s.user.wait(second["id"], "applied", timeout=120)
    assert s.applies() == 2


def test_an_unreadable_claim_answer_does_not_stop_the_agent_from_claiming(scenario, live_url):
    """A claim answer the agent cannot read (a proxy mangling it, a server bug) is logged
    and ignored: the agent goes on claiming and runs the next job."""
    first: list[bool] = []

    def mangle_first_claim(method: str, path: str, body: bytes) -> bytes | None:
        if path.startswith("/agent/v1/claim") and not first:
            first.append(True)
            return b'{"jobs": [{"id": "not a job"}]}'
        return None

    s = scenario()
    with LossyProxy(live_url, forge=mangle_first_claim) as net:
        s.agent("a1", server=net.url)
        run = s.user.queue(s.workspace["id"])
        s.user.wait(run["id"], "apply_pending", timeout=120)
    assert net.forged and net.forged[0].startswith("POST /agent/v1/claim")
