"""Pool pages: pools, their agents and each agent's slots."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Prefetch, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone

from agents_app.models import Agent, AgentPool, AgentStatus, FreezeWindow, Slot, SlotState
from agents_app.services.freeze import pool_freeze, window_active_occurrence
from iacplatform.permissions import is_site_admin


def _site_admin_only(request: HttpRequest) -> None:
    # Pools, agents and slots are the site admins' to manage (and show other teams' runs).
    if not is_site_admin(request.user):
        raise PermissionDenied("only site admins see pools")


@login_required
def pool_list(request: HttpRequest) -> HttpResponse:
    _site_admin_only(request)
    pools = AgentPool.objects.annotate(
        online_agents=Count("agents", filter=Q(agents__status=AgentStatus.ONLINE), distinct=True),
        busy_slots=Count(
            "agents__slots",
            filter=Q(agents__status=AgentStatus.ONLINE, agents__slots__state=SlotState.RUNNING),
            distinct=True,
        ),
        reserved_slots=Count(
            "agents__slots",
            filter=Q(agents__status=AgentStatus.ONLINE, agents__slots__state=SlotState.RESERVED),
            distinct=True,
        ),
    ).order_by("name")
    return render(request, "agents_app/pool_list.html", {"pools": pools})


@login_required
def pool_detail(request: HttpRequest, pool_id: int) -> HttpResponse:
    _site_admin_only(request)
    pool = get_object_or_404(AgentPool, id=pool_id)
    # Online agents first; offline ones stay listed so a vanished agent is explainable.
    agents = (
        Agent.objects.filter(pool=pool)
        .prefetch_related(Prefetch("slots", queryset=Slot.objects.select_related("task", "job").order_by("index")))
        # "online" sorts after "offline", hence the descending order.
        .order_by("-status", "name")
    )
    workspaces = pool.workspaces.order_by("name")
    now = timezone.now()
    windows = list(FreezeWindow.objects.filter(pool=pool).select_related("lifted_by").order_by("id"))
    for window in windows:
        active = window_active_occurrence(window, now) if window.enabled else None
        window.active_until = active.end if active else None  # type: ignore[attr-defined]
    return render(request, "agents_app/pool_detail.html", {
        "pool": pool, "agents": agents, "workspaces": workspaces,
        "freeze": pool_freeze(pool, now), "windows": windows,
    })
