"""The warm apply on a busy pool, end to end: every slot busy with plans and applies while
more runs queue, and Redis answering late at moments, as it does when terraform keeps the
machine's cores busy. Every apply must still be taken by the agent that holds its plan's
warm dir, on the fast path. Before the fix, one late answer (a live-page update) opened the
Redis circuit breaker for 1.5 s, every Confirm's push in that time "failed" and its apply
went cold to any agent: on the dispatch benchmark, three applies in four."""

from __future__ import annotations

import threading

import pytest
import redis
from django.conf import settings

from tasks_app.dispatch.models import Job
from tasks_app.models import Task
from tests.live import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Every plan has changes (timestamp() is unknown until apply), so every run applies.
CHANGING_TF = """
resource "terraform_data" "t" {
  input            = timestamp()
  triggers_replace = timestamp()
}
"""

AGENTS, SLOTS, WORKSPACES, RUNS_EACH = 2, 2, 8, 2  # twice as many workspaces as slots


class SlowRedis:
    """Redis answers nobody for `pause_ms` out of every `every` seconds (CLIENT PAUSE): calls
    made then get their answers after the platform's 0.25 s timeouts."""

    def __init__(self, pause_ms: int = 400, every: float = 1.0) -> None:
        self.client = redis.Redis.from_url(settings.REDIS_URL)
        self.pause_ms, self.every = pause_ms, every
        self.stop = threading.Event()
        self.pauses = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self.client.execute_command("CLIENT", "PAUSE", self.pause_ms, "ALL")
            self.pauses += 1

    def __enter__(self) -> SlowRedis:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.client.execute_command("CLIENT", "UNPAUSE")


def test_every_apply_on_a_busy_pool_is_taken_by_its_warm_agent_on_the_fast_path(scenario):
    s = scenario(files={"main.tf": CHANGING_TF})
    for i in range(AGENTS):
        s.agent(f"busy{i}", slots=SLOTS)
    s.user.request("PATCH", f"/api/v1/workspaces/{s.workspace['id']}/", json={"auto_apply": True}, expect=200)
    workspaces = [s.workspace["id"]] + [
        s.user.create_workspace(f"busy-{s.pool.id}-{i}", s.pool.id, {"main.tf": CHANGING_TF}, auto_apply=True)["id"]
        for i in range(1, WORKSPACES)
    ]

    with SlowRedis() as slow:
        runs = [s.user.queue(ws)["id"] for _ in range(RUNS_EACH) for ws in workspaces]
        wait_for(lambda: Task.objects.filter(id__in=runs, status__in=["applied", "errored", "discarded",
                                                                        "cancelled"]).count() == len(runs),
                 240, f"{len(runs)} runs to end", interval=0.5)
    assert slow.pauses >= 3, "Redis was never slow: the test proves nothing"

    wrong = []
    for task in Task.objects.filter(id__in=runs).order_by("id"):
        plan = Job.objects.filter(task=task, kind="plan").order_by("-id").first()
        apply = Job.objects.filter(task=task, kind="apply").first()
        took = (apply.agent.name if apply and apply.agent else None, task.apply_path, apply.fence if apply else None)
        if task.status != "applied" or took != (plan.agent.name, "fast", 1):
            wrong.append(f"run {task.id} {task.status}: planned on {plan.agent.name}, apply taken by {took[0]} "
                         f"(path {took[1]}, fence {took[2]}): {task.apply_path_reason}; {task.message}")
    assert not wrong, "\n".join(wrong)
