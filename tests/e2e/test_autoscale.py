"""The autoscaler on the `local` backend, end to end: the live worker's beat task starts and
stops real agent processes for a pool (min 1, max 3), and never removes a pod that holds a
run's warm dir."""

from __future__ import annotations

import pytest

from agents_app.models import AgentPool, Pod, ScalingDecision
from agents_app.pods.local import LocalBackend
from agents_app.protocol import PodPhase
from tests.factories import make_pool
from tests.live import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Built-in resources only (init works offline); nothing written outside the job dir, so the
# agents need no extra sandbox binds.
MAIN_TF = """
resource "terraform_data" "scaled" {
  input = "hello"
}
"""


def live_pods(pool) -> list[Pod]:
    return list(Pod.objects.filter(pool=pool, phase__in=[PodPhase.PENDING, PodPhase.RUNNING]))


def test_it_scales_a_local_pool_up_for_a_burst_and_back_down_around_a_reservation(user):
    pool, _ = make_pool(
        backend="local", min_replicas=1, max_replicas=3, slots_per_pod=3, scale_up_delay_seconds=1,
        scale_down_delay_seconds=5, cooldown_seconds=2, warmup_expire_seconds=300, pod_start_wait_seconds=60,
        pod_register_deadline_seconds=60,
    )
    try:
        # min 1: the autoscaler starts one pod, whose agent registers.
        wait_for(lambda: [p for p in live_pods(pool) if p.phase == PodPhase.RUNNING], 60, "the first pod to run")

        workspaces = [user.create_workspace(f"scale-{pool.id}-{i}", pool.id, {"main.tf": MAIN_TF}) for i in range(9)]
        runs = [user.queue(ws["id"])["id"] for ws in workspaces]
        most = 0

        def three_running() -> bool:
            nonlocal most
            pods = live_pods(pool)
            most = max(most, len(pods))
            return len([p for p in pods if p.phase == PodPhase.RUNNING]) == 3

        wait_for(three_running, 90, "3 pods with registered agents")
        pending = [user.wait(r, "apply_pending", warmup="ready", timeout=180) for r in runs]
        assert most <= 3 and len(live_pods(pool)) == 3
        assert len({p["warmup_agent"] for p in pending}) == 3  # 9 reservations over the 3 pods
        up = ScalingDecision.objects.filter(pool=pool, action="up").order_by("id")
        assert any("queued work" in d.reason and "at once" in d.reason for d in up), [d.reason for d in up]

        # All but one are confirmed and applied; the last keeps its reservation.
        kept = pending[-1]
        for run in pending[:-1]:
            assert user.confirm(run["id"]).status_code == 200
        for run in pending[:-1]:
            assert user.wait(run["id"], "applied", timeout=120)["status"] == "applied"

        # Demand fell to 1 reserved slot: back to 1 pod after the delay, never the reserved one.
        def scaled_down() -> bool:
            done = not Pod.objects.filter(pool=pool, phase=PodPhase.DRAINING).exists()
            return done and len(live_pods(pool)) == 1 and ScalingDecision.objects.filter(pool=pool, action="down").exists()

        wait_for(scaled_down, 90, "the pool to scale back to 1 pod")
        (left,) = live_pods(pool)
        assert left.name == kept["warmup_agent"]
        down = ScalingDecision.objects.filter(pool=pool, action="down")
        assert all(kept["warmup_agent"] not in d.pods_deleted for d in down)
        gone = Pod.objects.filter(pool=pool, phase=PodPhase.GONE)
        assert gone.count() == 2 and all("idle" in p.message for p in gone)

        # The reservation survived: Confirm takes the fast path.
        assert user.confirm(kept["id"]).status_code == 200
        done = user.wait(kept["id"], "applied", timeout=120)
        assert done["apply_path"] == "fast", done["apply_path_reason"]
        assert [user.run(r)["status"] for r in runs] == ["applied"] * 9
    finally:
        # Not managed any more (the autoscaler skips static pools); stop what it started.
        AgentPool.objects.filter(id=pool.id).update(backend="static")
        pool.backend = "local"
        backend = LocalBackend()
        for found in backend.list(pool):
            backend.delete(pool, found.name)
