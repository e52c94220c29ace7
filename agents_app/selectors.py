"""Reads for the pool pages: what the page and its live fragments show, in one place, so
that the first render (agents_app/views.py) and each live re-render (agents_app/consumers.py)
show the same thing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Prefetch
from django.utils import timezone

from agents_app.models import Agent, AgentPool, FreezeWindow, Pod, ScalingDecision
from agents_app.protocol import PodPhase
from agents_app.services.freeze import Freeze, freeze_text, pool_freeze, window_active_occurrence
from tasks_app.dispatch.models import Slot

# Decisions that changed something, newest first. The autoscaler records one decision per
# pool each tick (IAC_AUTOSCALE_INTERVAL_SECONDS), mostly "none": the page shows the latest
# one whatever it is, then the recent ones that acted.
RECENT_DECISIONS = 15


@dataclass
class PoolPage:
    pool: AgentPool
    agents: list[Agent]
    pods: list[Pod]
    latest_decision: ScalingDecision | None
    decisions: list[ScalingDecision]
    freeze: Freeze
    windows: list[FreezeWindow]
    now: datetime

    def context(self) -> dict[str, Any]:
        return {"pool": self.pool, "agents": self.agents, "pods": self.pods,
                "latest_decision": self.latest_decision, "decisions": self.decisions,
                "freeze": self.freeze, "windows": self.windows, "now": self.now,
                # The one wording of a freeze, as in waiting reasons and Confirm's refusal.
                "freeze_text": freeze_text(self.freeze) if self.freeze.frozen else ""}


def pool_page(pool: AgentPool, now: datetime | None = None) -> PoolPage:
    """Everything the pool page shows but the pool's own fields; a handful of queries."""
    now = now or timezone.now()
    slots = Slot.objects.select_related("task__workspace", "job").order_by("index")
    agents = list(
        Agent.objects.filter(pool=pool)
        .prefetch_related(Prefetch("slots", queryset=slots))
        # Online agents first ("online" sorts after "offline"), offline ones stay listed so
        # that a vanished agent is explainable.
        .order_by("-status", "name")
    )
    pods = list(Pod.objects.filter(pool=pool).exclude(phase=PodPhase.GONE).select_related("agent").order_by("id"))
    latest = ScalingDecision.objects.filter(pool=pool).order_by("-id").first()
    decisions = list(ScalingDecision.objects.filter(pool=pool).exclude(action="none").order_by("-id")[:RECENT_DECISIONS])
    windows = list(FreezeWindow.objects.filter(pool=pool).select_related("lifted_by").order_by("id"))
    for window in windows:
        active = window_active_occurrence(window, now) if window.enabled else None
        window.active_until = active.end if active else None  # type: ignore[attr-defined]
    return PoolPage(pool=pool, agents=agents, pods=pods, latest_decision=latest, decisions=decisions,
                    freeze=pool_freeze(pool, now), windows=windows, now=now)
