"""The autoscaler's decision (agents_app/scaling.py), pure, with an injected clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from agents_app.scaling import DOWN, NONE, UP, PodView, ScalingInputs, decide

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def pods(n: int, *, busy: tuple[int, ...] = ()) -> list[PodView]:
    return [PodView(name=f"p{i}", created_at=T0 + timedelta(seconds=i), idle=i not in busy) for i in range(n)]


def inputs(**kw) -> ScalingInputs:
    base = dict(
        now=T0, frozen=False, min_replicas=1, max_replicas=10, slots_per_pod=3, running=0, queued=0, reserved=0,
        pods=pods(1), last_activity_at=None, scale_up_delay=30, scale_down_delay=900, cooldown=900,
    )
    base.update(kw)
    return ScalingInputs(**base)


def test_it_scales_up_at_once_for_queued_plans():
    d = decide(inputs(queued=9))
    assert (d.action, d.desired, d.create) == (UP, 3, 2)
    assert "at once" in d.reason


def test_it_clamps_to_max_and_min():
    assert decide(inputs(queued=100)).desired == 10
    d = decide(inputs(pods=[], min_replicas=2))
    assert (d.action, d.create) == (UP, 2)


def test_warm_reservations_alone_wait_scale_up_delay():
    first = decide(inputs(reserved=6))  # 6 reserved / 3 slots: 2 pods, 1 present
    assert first.action == NONE and first.warm_up_wanted_since == T0
    later = decide(inputs(reserved=6, now=T0 + timedelta(seconds=29), warm_up_wanted_since=first.warm_up_wanted_since))
    assert later.action == NONE
    due = decide(inputs(reserved=6, now=T0 + timedelta(seconds=30), warm_up_wanted_since=first.warm_up_wanted_since))
    assert (due.action, due.create, due.warm_up_wanted_since) == (UP, 1, None)


def test_queued_work_does_not_wait_for_the_warm_part():
    # running 3 + queued 3 need 2 pods at once; the 6 reserved add 2 more, which wait.
    d = decide(inputs(running=3, queued=3, reserved=6))
    assert (d.action, d.create, d.desired) == (UP, 1, 4)
    assert d.warm_up_wanted_since == T0


def test_scale_down_waits_for_the_delay_then_removes_idle_pods():
    first = decide(inputs(pods=pods(3)))
    assert first.action == NONE and first.scale_down_wanted_since == T0
    early = decide(inputs(pods=pods(3), now=T0 + timedelta(seconds=899), scale_down_wanted_since=T0))
    assert early.action == NONE and "scale_down_delay" in early.reason
    due = decide(inputs(pods=pods(3), now=T0 + timedelta(seconds=900), scale_down_wanted_since=T0))
    assert due.action == DOWN and len(due.delete) == 2


def test_demand_coming_back_resets_the_scale_down_clock():
    d = decide(inputs(pods=pods(2), running=4, scale_down_wanted_since=T0 - timedelta(hours=1)))
    assert d.action == NONE and d.scale_down_wanted_since is None


def test_no_scale_down_inside_the_cooldown():
    now = T0 + timedelta(seconds=1000)
    d = decide(inputs(pods=pods(3), now=now, scale_down_wanted_since=T0, last_scaled_at=now - timedelta(seconds=100)))
    assert d.action == NONE and "cooldown" in d.reason
    ok = decide(inputs(pods=pods(3), now=now, scale_down_wanted_since=T0, last_scaled_at=now - timedelta(seconds=900)))
    assert ok.action == DOWN


def test_no_scale_down_while_a_task_was_active_within_the_delay():
    now = T0 + timedelta(seconds=1000)
    d = decide(inputs(pods=pods(3), now=now, scale_down_wanted_since=T0, last_activity_at=now - timedelta(seconds=600)))
    assert d.action == NONE and "active" in d.reason
    ok = decide(inputs(pods=pods(3), now=now, scale_down_wanted_since=T0, last_activity_at=now - timedelta(seconds=901)))
    assert ok.action == DOWN


def test_busy_and_reserved_pods_are_never_chosen():
    now = T0 + timedelta(seconds=1000)
    d = decide(inputs(pods=pods(3, busy=(0, 2)), now=now, scale_down_wanted_since=T0, reserved=1))
    # 1 reserved slot: 1 pod wanted, 3 present, only p1 is idle.
    assert d.delete == ["p1"]
    none = decide(inputs(pods=pods(3, busy=(0, 1, 2)), now=now, scale_down_wanted_since=T0, reserved=1))
    assert none.action == NONE and "never removed" in none.reason


def test_frozen_means_zero_and_removes_only_idle_pods():
    d = decide(inputs(pods=pods(3, busy=(1,)), frozen=True, queued=5))
    assert d.desired == 0 and d.action == DOWN and sorted(d.delete) == ["p0", "p2"]
    assert "frozen" in d.reason


def test_steady_state_does_nothing():
    d = decide(inputs(pods=pods(2), running=4))
    assert d.action == NONE and d.desired == 2
    assert decide(replace(inputs(), pods=pods(1))).action == NONE
