"""A freeze window end to end: real Daphne, real Celery sweep, a real agent running
real terraform. The window starts while a plan runs and an apply runs: the plan is cancelled
with the window's words, the apply finishes, nothing new starts, Confirm is refused naming
the window's end; the window is lifted: the waiting run warms up again and applies."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from agents_app.models import FreezeWindow
from agents_app.services.freeze import moment_text
from tasks_app.dispatch.models import Job
from tasks_app.models import StateLock
from tests.e2e.test_dispatch import wrapper
from tests.live import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# The apply writes "started", sleeps a few seconds (terraform holds the state lock), then
# writes "applied".
SLOW_APPLY_TF = """
variable "marker_file" { type = string }
resource "terraform_data" "slow" {
  provisioner "local-exec" {
    command = "echo started >> ${var.marker_file}; sleep 6; echo applied >> ${var.marker_file}"
  }
}
"""


def test_a_freeze_cancels_the_running_plan_lets_the_apply_finish_refuses_confirm_and_lifting_it_applies(
    scenario, tmp_path,
):
    s = scenario()  # workspace "waiting": the demo config, its marker counts applies
    hang, hanging = tmp_path / "hang", tmp_path / "hanging"
    # While `hang` exists, terraform plan hangs (until interrupted), like a slow refresh.
    terraform = wrapper(tmp_path, "slow-plan", (
        f'if [ "$1" = plan ] && [ -e {hang} ]; then touch {hanging}; sleep 120; fi'
    ))
    s.agent("a1", slots=3, env={"IAC_TERRAFORM_BIN": terraform})
    slow_marker = tmp_path / "slow-applied.txt"
    slow = s.user.create_workspace(f"{s.workspace['name']}-slow", s.pool.id, {"main.tf": SLOW_APPLY_TF},
                                   {"marker_file": str(slow_marker)})
    applying = s.user.queue(slow["id"])
    waiting = s.user.queue(s.workspace["id"])
    s.user.wait(applying["id"], "apply_pending", warmup="ready")
    s.user.wait(waiting["id"], "apply_pending", warmup="ready")
    assert s.user.confirm(applying["id"]).status_code == 200
    wait_for(lambda: slow_marker.exists(), 60, "the apply to start its provisioner")

    hang.touch()
    planning = s.user.queue(s.workspace["id"], "plan")  # plan-only: it does not wait for the workspace
    wait_for(hanging.exists, 60, "terraform plan to run")

    now = timezone.now()
    window = s.user.request("POST", f"/api/v1/pools/{s.pool.id}/freeze-windows/", expect=201, json={
        "name": "maintenance", "kind": "one_off", "reason": "database upgrade",
        "starts_at": (now - timedelta(seconds=1)).isoformat(), "ends_at": (now + timedelta(minutes=10)).isoformat(),
    }).json()
    end = moment_text(FreezeWindow.objects.get(id=window["id"]).ends_at)

    cancelled = s.user.wait(planning["id"], "cancelled", timeout=60)
    assert cancelled["message"] == f"cancelled: the pool entered freeze window 'maintenance' until {end}"
    held = s.user.run(waiting["id"])
    assert held["warmup_status"] == "none", "its reservation was released"

    refused = s.user.confirm(waiting["id"])
    assert refused.status_code == 409
    assert refused.json()["detail"] == (f"pool '{s.pool.name}' is frozen until {end} (maintenance): Confirm Apply "
                                        "is refused until the window ends (or a site admin lifts it)")

    done = s.user.wait(applying["id"], "applied", timeout=60)
    assert slow_marker.read_text() == "started\napplied\n", "the running apply was never interrupted"
    assert done["status"] == "applied"
    assert not StateLock.objects.filter(workspace_id=slow["id"]).exists()

    hang.unlink()
    queued = s.user.queue(s.workspace["id"], "plan")
    time.sleep(3)  # sweeps and long-polls had every chance to start something
    run = s.user.run(queued["id"])
    assert (run["status"], run["waiting_reason"]) == ("plan_queued", f"queued: frozen until {end} (maintenance)")
    assert s.user.run(waiting["id"])["warmup_status"] == "none", "no warmup while frozen"
    assert not Job.objects.filter(task_id=waiting["id"], kind="warmup").exists()

    s.user.request("POST", f"/api/v1/pools/{s.pool.id}/freeze-windows/{window['id']}/lift/",
                   json={"reason": "upgrade done early"}, expect=200)
    s.user.wait(queued["id"], "planned", timeout=60)
    s.user.wait(waiting["id"], "apply_pending", warmup="ready", timeout=60)
    assert s.user.confirm(waiting["id"]).status_code == 200
    applied = s.user.wait(waiting["id"], "applied", timeout=60)
    assert applied["apply_path"] in ("fast", "rewarmed"), applied["apply_path_reason"]
    assert s.applies() == 1


def test_a_frozen_local_pool_has_no_pods_and_after_the_window_its_pod_returns_and_the_run_rewarms(user):
    """The autoscaler and the freeze together, on the `local` backend: entering the window
    releases the run's reservation and the now idle pod is deleted; Confirm is refused; the
    window is lifted, a pod comes back, the run warms up on it and applies."""
    from agents_app.models import AgentPool, Pod, ScalingDecision
    from agents_app.pods.local import LocalBackend
    from agents_app.protocol import PodPhase
    from tests.e2e.test_autoscale import MAIN_TF, live_pods
    from tests.factories import make_pool

    pool, _ = make_pool(
        backend="local", min_replicas=1, max_replicas=1, slots_per_pod=3, scale_up_delay_seconds=1,
        scale_down_delay_seconds=5, cooldown_seconds=1, warmup_expire_seconds=300, pod_register_deadline_seconds=60,
    )
    try:
        first = wait_for(lambda: [p for p in live_pods(pool) if p.phase == PodPhase.RUNNING], 60, "a pod to run")[0]
        ws = user.create_workspace(f"frozen-{pool.id}", pool.id, {"main.tf": MAIN_TF})
        run = user.queue(ws["id"])
        held = user.wait(run["id"], "apply_pending", warmup="ready", timeout=120)
        assert held["warmup_agent"] == first.name

        now = timezone.now()
        window = user.request("POST", f"/api/v1/pools/{pool.id}/freeze-windows/", expect=201, json={
            "name": "release", "kind": "one_off",
            "starts_at": (now - timedelta(seconds=1)).isoformat(), "ends_at": (now + timedelta(minutes=10)).isoformat(),
        }).json()
        wait_for(lambda: not live_pods(pool), 60, "the frozen pool's idle pod to be deleted")
        assert user.run(run["id"])["warmup_status"] == "none"
        wait_for(lambda: ScalingDecision.objects.filter(pool=pool, desired=0, reason__contains="frozen").exists(), 30,
                 "the autoscaler's decision for the frozen pool")
        assert user.confirm(run["id"]).status_code == 409

        user.request("POST", f"/api/v1/pools/{pool.id}/freeze-windows/{window['id']}/lift/",
                     json={"reason": "released early"}, expect=200)
        back = wait_for(lambda: [p for p in live_pods(pool) if p.phase == PodPhase.RUNNING], 90, "a pod to return")[0]
        assert back.name != first.name
        assert Pod.objects.get(id=first.id).phase == PodPhase.GONE
        ready = user.wait(run["id"], "apply_pending", warmup="ready", timeout=120)
        assert ready["warmup_agent"] == back.name
        assert user.confirm(run["id"]).status_code == 200
        done = user.wait(run["id"], "applied", timeout=120)
        assert done["apply_path"] == "rewarmed", done["apply_path_reason"]
    finally:
        AgentPool.objects.filter(id=pool.id).update(backend="static")  # the autoscaler lets go
        backend = LocalBackend()
        for found in backend.list(pool):
            backend.delete(pool, found.name)
