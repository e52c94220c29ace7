"""Bounds and state locks, end to end: real Daphne, real Celery sweep, real agent processes,
real terraform."""

from __future__ import annotations

import pytest

from tasks_app.dispatch.models import Job, Slot
from tasks_app.models import StateLock
from tests.e2e.test_dispatch import wrapper
from tests.live import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# The apply writes "started", then sleeps while terraform holds the state lock, as long as the
# flag file exists; without it the same config applies at once.
SLOW_WHILE_FLAGGED_TF = """
variable "marker_file" { type = string }
variable "slow_flag" { type = string }
resource "terraform_data" "slow" {
  provisioner "local-exec" {
    command = "echo started >> ${var.marker_file}; if [ -e ${var.slow_flag} ]; then sleep 60; fi; echo applied >> ${var.marker_file}"
  }
}
"""


def test_a_force_cancelled_apply_leaves_no_lock_and_the_next_run_applies(scenario, tmp_path):
    s = scenario(files={"main.tf": SLOW_WHILE_FLAGGED_TF})
    flag = tmp_path / "slow"
    flag.touch()
    ws = s.workspace["id"]
    s.user.request("POST", f"/api/v1/workspaces/{ws}/variables/",
                   json={"key": "slow_flag", "value": str(flag), "category": "terraform"}, expect=201)
    s.agent("a1")
    run = s.user.queue(ws)
    s.user.wait(run["id"], "apply_pending")
    assert s.user.confirm(run["id"]).status_code == 200
    wait_for(lambda: s.marker.exists(), 60, "the apply to start its provisioner")
    apply = Job.objects.get(task_id=run["id"], kind="apply")
    lock = wait_for(lambda: StateLock.objects.filter(workspace_id=ws).first(), 10, "terraform's state lock")
    assert lock.job_id == apply.id, "terraform holds the state lock while it applies"

    s.user.request("POST", f"/api/v1/runs/{run['id']}/cancel/", json={"force": True}, expect=200)
    cancelled = s.user.wait(run["id"], "cancelled", timeout=30)
    assert "applied" not in s.marker.read_text(), "SIGKILL: terraform never finished"
    assert "cancelled" in cancelled["message"]
    assert not StateLock.objects.filter(workspace_id=ws).exists(), "a SIGKILLed terraform's lock is released"

    flag.unlink()
    again = s.user.queue(ws)
    s.user.wait(again["id"], "apply_pending", timeout=60)
    assert s.user.confirm(again["id"]).status_code == 200
    s.user.wait(again["id"], "applied", timeout=60)
    log = s.user.log(again["id"])
    assert "Error acquiring the state lock" not in log
    assert s.marker.read_text().count("applied") == 1
    assert not StateLock.objects.filter(workspace_id=ws).exists()


def test_a_plan_past_its_bound_is_interrupted_then_killed_and_the_run_errors_saying_so(scenario, tmp_path):
    s = scenario()
    # A hung terraform plan: it notes every SIGINT and keeps going, so only SIGKILL ends it.
    signals, hang, hanging = tmp_path / "signals.txt", tmp_path / "hang", tmp_path / "hanging"
    hang.touch()
    slow = wrapper(tmp_path, "hanging-plan", (
        f'if [ "$1" = plan ] && [ -e {hang} ]; then\n'
        f"  trap 'echo SIGINT >> {signals}' INT\n"
        f"  touch {hanging}\n"
        "  i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n"
        "fi"
    ))
    a1 = s.agent("a1", slots=1, env={"IAC_TERRAFORM_BIN": slow})
    run = s.user.queue(s.workspace["id"], "plan")
    wait_for(hanging.exists, 60, "terraform plan to hang")
    # The admin lowers the pool's plan bound below what this plan has already run.
    pool = s.user.request("PATCH", f"/api/v1/pools/{s.pool.id}/",
                          json={"plan_timeout_seconds": 1, "plan_kill_grace_seconds": 2}, expect=200).json()
    assert (pool["plan_timeout_seconds"], pool["plan_kill_grace_seconds"]) == (1, 2)

    errored = s.user.wait(run["id"], "errored", timeout=60)
    assert signals.read_text() == "SIGINT\n", "one SIGINT, however often the heartbeat repeated the order"
    assert errored["message"] == (f"the plan ran past its 1s bound (pool {s.pool.name}); terraform was interrupted; "
                                  "it did not stop within its grace and was killed")
    assert [e["message"] for e in errored["events"]][-1] == errored["message"]
    assert Job.objects.get(task_id=run["id"], kind="plan").status == "cancelled"
    assert not Slot.objects.filter(agent__name=a1.name).exclude(state="idle").exists(), "the slot is free again"

    hang.unlink()
    nxt = s.user.queue(s.workspace["id"], "plan")
    s.user.wait(nxt["id"], "planned", timeout=60)


def test_an_apply_past_its_bound_gets_sigint_only_stops_at_a_safe_point_and_unlocks(scenario, tmp_path):
    s = scenario(files={"main.tf": SLOW_WHILE_FLAGGED_TF})
    flag = tmp_path / "slow"
    flag.touch()
    ws = s.workspace["id"]
    s.user.request("POST", f"/api/v1/workspaces/{ws}/variables/",
                   json={"key": "slow_flag", "value": str(flag), "category": "terraform"}, expect=201)
    s.agent("a1")
    run = s.user.queue(ws)
    s.user.wait(run["id"], "apply_pending")
    assert s.user.confirm(run["id"]).status_code == 200
    wait_for(lambda: s.marker.exists(), 60, "the apply to start its provisioner")
    wait_for(lambda: StateLock.objects.filter(workspace_id=ws).exists(), 10, "terraform's state lock")
    s.user.request("PATCH", f"/api/v1/pools/{s.pool.id}/",
                   json={"apply_timeout_seconds": 1, "apply_kill_grace_seconds": 600}, expect=200)

    errored = s.user.wait(run["id"], "errored", timeout=60)
    assert errored["message"].startswith(
        f"the apply ran past its 1s bound (pool {s.pool.name}); terraform was interrupted (SIGINT) so that it "
        f"stops at a safe point, saves the state and releases its lock; SIGKILL follows only after 10 min; "
        f"it stopped at a safe point"), errored["message"]
    log = s.user.log(run["id"])
    assert "Interrupt received" in log, "terraform itself got the SIGINT (not a kill of its sandbox)"
    assert not StateLock.objects.filter(workspace_id=ws).exists(), "terraform released its lock"
    assert "applied" not in s.marker.read_text()

    flag.unlink()
    s.user.request("PATCH", f"/api/v1/pools/{s.pool.id}/", json={"apply_timeout_seconds": 7200}, expect=200)
    again = s.user.queue(ws)
    s.user.wait(again["id"], "apply_pending", timeout=60)
    assert s.user.confirm(again["id"]).status_code == 200
    s.user.wait(again["id"], "applied", timeout=60)
    assert s.marker.read_text().count("applied") == 1
