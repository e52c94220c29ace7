"""The autoscaler's decision for one pool, pure: inputs in, a decision out, the clock
injected (`now`), no database. agents_app/services/autoscaler.py gathers the inputs, stores
the decision (a ScalingDecision row) and acts on it.

The design note's rules (variant D), as they read here:
- demand = running jobs + claimable queued jobs + ready, unexpired warm reservations with
  fewer failed warmups than the pool's limit; desired = clamp(ceil(demand / slots), min, max),
  or 0 while the pool is frozen;
- scale up at once for queued plans and applies (what running + queued alone need); demand
  that only the warm reservations add waits `scale_up_delay` first;
- scale down only after demand stayed lower for `scale_down_delay`, outside `cooldown`
  after the last scaling action, never while a job of the pool was active within
  `scale_down_delay`, and only pods whose slots are all idle (busy or reserved pods are never
  candidates). Freezing skips the delays: idle pods go at once, busy ones when they are idle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

UP, DOWN, NONE = "up", "down", "none"


@dataclass(frozen=True)
class PodView:
    name: str
    created_at: datetime
    idle: bool  # every slot idle (or not registered yet: it holds nothing)


@dataclass(frozen=True)
class ScalingInputs:
    now: datetime
    frozen: bool
    min_replicas: int
    max_replicas: int
    slots_per_pod: int
    running: int  # jobs running in the pool (plans, applies, warmups)
    queued: int  # claimable queued plans and applies (warmups are not: they wait for room)
    reserved: int  # ready, unexpired warm reservations under the retry limit
    pods: list[PodView]  # the pool's live pods (pending or running)
    last_activity_at: datetime | None  # the last moment a job of the pool was queued or running
    scale_up_delay: float
    scale_down_delay: float
    cooldown: float
    # The scaler's memory from the previous tick.
    scale_down_wanted_since: datetime | None = None
    warm_up_wanted_since: datetime | None = None
    last_scaled_at: datetime | None = None

    @property
    def demand(self) -> int:
        return self.running + self.queued + self.reserved


@dataclass(frozen=True)
class Decision:
    action: str  # up | down | none
    desired: int
    create: int = 0
    delete: list[str] = field(default_factory=list)
    reason: str = ""
    # The memory for the next tick.
    scale_down_wanted_since: datetime | None = None
    warm_up_wanted_since: datetime | None = None


def _clamp(n: int, low: int, high: int) -> int:
    return max(low, min(high, n))


def _pods_for(demand: int, slots: int) -> int:
    return math.ceil(demand / slots) if demand > 0 else 0


def _ago(now: datetime, then: datetime | None) -> float:
    return (now - then).total_seconds() if then is not None else math.inf


def decide(i: ScalingInputs) -> Decision:
    have = len(i.pods)
    idle = sorted((p for p in i.pods if p.idle), key=lambda p: p.created_at, reverse=True)  # newest first
    if i.frozen:
        delete = [p.name for p in idle]
        busy = have - len(delete)
        why = "the pool is frozen: desired 0"
        if delete:
            why += f"; removing {len(delete)} idle pod(s)"
        if busy:
            why += f"; {busy} busy or reserved pod(s) go when idle"
        return Decision(DOWN if delete else NONE, 0, delete=delete, reason=why)

    slots = i.slots_per_pod
    hot = _clamp(_pods_for(i.running + i.queued, slots), i.min_replicas, i.max_replicas)
    desired = _clamp(_pods_for(i.demand, slots), i.min_replicas, i.max_replicas)
    counts = f"demand {i.demand} (running {i.running}, queued {i.queued}, reserved {i.reserved}) / {slots} slots"

    if desired > have:
        create = max(hot - have, 0)  # queued plans and applies: at once
        warm_only = desired - max(have, hot)  # what only the warm reservations add
        warm_since = None
        if warm_only > 0:
            warm_since = i.warm_up_wanted_since or i.now
            waited = _ago(i.now, warm_since)
            if waited >= i.scale_up_delay:
                create, warm_since = desired - have, None
                why = f"warm reservations waited {waited:.0f}s >= scale_up_delay {i.scale_up_delay:g}s"
            else:
                why = f"{warm_only} pod(s) for warm reservations wait scale_up_delay ({waited:.0f}/{i.scale_up_delay:g}s)"
            if hot > have:
                why = f"queued work needs {hot} pod(s) at once; " + why
        else:
            why = "queued work scales up at once"
        return Decision(UP if create else NONE, desired, create=create, warm_up_wanted_since=warm_since,
                        reason=f"{counts}: {desired} pod(s) wanted, {have} present; {why}")

    if desired == have:
        return Decision(NONE, desired, reason=f"{counts}: {have} pod(s), as wanted")

    # desired < have: maybe scale down.
    lower_since = i.scale_down_wanted_since or i.now
    keep = Decision(NONE, desired, scale_down_wanted_since=lower_since)
    lower_for = _ago(i.now, lower_since)
    if lower_for < i.scale_down_delay:
        return _with(keep, f"{counts}: {desired} pod(s) wanted, {have} present; demand lower for "
                           f"{lower_for:.0f}/{i.scale_down_delay:g}s (scale_down_delay)")
    since_scaled = _ago(i.now, i.last_scaled_at)
    if since_scaled < i.cooldown:
        return _with(keep, f"{counts}: {desired} pod(s) wanted, {have} present; in cooldown "
                           f"({since_scaled:.0f}/{i.cooldown:g}s since the last scaling)")
    active_ago = _ago(i.now, i.last_activity_at)
    if active_ago < i.scale_down_delay:
        return _with(keep, f"{counts}: {desired} pod(s) wanted, {have} present; a job of the pool was active "
                           f"{active_ago:.0f}s ago (< scale_down_delay {i.scale_down_delay:g}s)")
    if not idle:
        return _with(keep, f"{counts}: {desired} pod(s) wanted, {have} present; no pod has all slots idle "
                           f"(busy and reserved pods are never removed)")
    delete = [p.name for p in idle[: have - desired]]
    held = have - desired - len(delete)
    why = f"{counts}: {desired} pod(s) wanted, {have} present; removing {len(delete)} idle pod(s)"
    if held:
        why += f" ({held} more would go, but their pods are busy or reserved)"
    return Decision(DOWN, desired, delete=delete, reason=why,
                    scale_down_wanted_since=lower_since if held else None)


def _with(d: Decision, reason: str) -> Decision:
    return Decision(d.action, d.desired, d.create, d.delete, reason, d.scale_down_wanted_since, d.warm_up_wanted_since)
