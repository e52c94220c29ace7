"""Cancel reaches a running terraform through the push, not the heartbeat: a platform whose
agents heartbeat once a minute, a plan that hangs until interrupted, real agent, real
Daphne, real Redis."""

from __future__ import annotations

import time

import pytest

from tasks_app.dispatch.models import Job
from tasks_app.models import TaskEvent
from tests.e2e.apiclient import PlatformUser
from tests.e2e.test_dispatch import wrapper
from tests.factories import make_token
from tests.live import AgentStarter, Scenario, start_platform, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

HEARTBEAT_SECONDS = 60


@pytest.fixture
def slow_heartbeat_platform(monkeypatch):
    # The agents learn their heartbeat interval from the server; the offline bound (and so
    # the job leases) must outlast it, or the sweep would declare the agent gone.
    monkeypatch.setenv("IAC_AGENT_HEARTBEAT_SECONDS", str(HEARTBEAT_SECONDS))
    monkeypatch.setenv("IAC_AGENT_OFFLINE_AFTER_SECONDS", str(5 * HEARTBEAT_SECONDS))
    platform = start_platform(tag="-cancel-push")
    try:
        yield platform
    finally:
        platform.stop()


def test_it_interrupts_a_running_plan_within_a_second_of_cancel_without_waiting_for_a_heartbeat(
    slow_heartbeat_platform, alice, tmp_path
):
    starter = AgentStarter(slow_heartbeat_platform.base, tmp_path)
    try:
        s = Scenario(PlatformUser(slow_heartbeat_platform.base, make_token(alice)), starter, tmp_path)
        # A terraform plan that runs until interrupted, writing down when its SIGINT came.
        sigint, hanging = tmp_path / "sigint.txt", tmp_path / "hanging"
        slow = wrapper(tmp_path, "slow-plan", (
            'if [ "$1" = plan ]; then\n'
            f"  trap 'date +%s.%N > {sigint}; exit 130' INT\n"
            f"  touch {hanging}\n"
            "  i=0; while [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n"
            "fi"
        ))
        s.agent("a1", env={"IAC_TERRAFORM_BIN": slow})
        run = s.user.queue(s.workspace["id"], "plan")
        wait_for(hanging.exists, 60, "terraform plan to start")

        asked = time.time()
        s.user.request("POST", f"/api/v1/runs/{run['id']}/cancel/", json={}, expect=200)
        cancelled = s.user.wait(run["id"], "cancelled", timeout=HEARTBEAT_SECONDS / 2)
        interrupted = float(wait_for(lambda: sigint.exists() and sigint.read_text().strip(), 5, "the SIGINT note"))

        job = Job.objects.get(task_id=run["id"], kind="plan")
        event = TaskEvent.objects.filter(task_id=run["id"], to_status="cancelled").get()
        to_sigint = interrupted - asked
        to_event = event.created_at.timestamp() - asked
        to_job_end = job.finished_at.timestamp() - asked
        print(f"cancel_to_sigint_ms={to_sigint * 1000:.0f} cancel_to_event_ms={to_event * 1000:.0f} "
              f"cancel_to_job_end_ms={to_job_end * 1000:.0f} heartbeat_s={HEARTBEAT_SECONDS}")
        assert to_sigint < 1.0, f"terraform got SIGINT {to_sigint:.2f}s after Cancel"
        assert to_event < 2.0 and to_job_end < 2.0, (to_event, to_job_end)
        assert job.status == "cancelled"
        assert "cancel" in cancelled["message"]
    finally:
        starter.stop_all()
