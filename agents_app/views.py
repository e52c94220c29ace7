"""Pool pages: pools, their pods, agents and slots, the autoscaler's decisions and the freeze
windows (site admins only). The detail page updates itself over a websocket
(agents_app/consumers.py); its actions (lift a freeze now, change settings) are plain forms."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from agents_app.models import AgentPool, AgentStatus, FreezeWindow
from agents_app.protocol import SlotState
from agents_app.selectors import pool_page
from agents_app.services.freeze_windows import freeze_window_lift
from agents_app.services.pool_settings import PAGE_FIELDS, pool_settings_update
from iacplatform.errors import Invalid, PlatformError
from iacplatform.permissions import is_site_admin
from tasks_app.services.sweep import pool_freeze_changed


def _site_admin_only(request: HttpRequest) -> None:
    # Pools, agents and slots are the site admins' to manage (and show other teams' runs).
    if not is_site_admin(request.user):
        raise PermissionDenied("only site admins see pools")


class PoolSettingsForm(forms.ModelForm):
    """Parses and checks the page's settings (the model's checks); the service checks them
    again under the pool's row lock and saves."""

    class Meta:
        model = AgentPool
        fields = PAGE_FIELDS


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


def _detail(request: HttpRequest, pool: AgentPool, *, settings_form: PoolSettingsForm | None = None,
            error: str = "", status: int = 200) -> HttpResponse:
    context = pool_page(pool).context()
    context.update(
        workspaces=pool.workspaces.order_by("name"),
        settings_form=settings_form or PoolSettingsForm(instance=pool),
        error=error,
    )
    return render(request, "agents_app/pool_detail.html", context, status=status)


@login_required
def pool_detail(request: HttpRequest, pool_id: int) -> HttpResponse:
    _site_admin_only(request)
    return _detail(request, get_object_or_404(AgentPool, id=pool_id))


@login_required
@require_POST
def pool_freeze_lift(request: HttpRequest, pool_id: int, window_id: int) -> HttpResponse:
    """Lift the window's active occurrence now: the pool thaws (unless another window keeps
    it frozen), its work is dispatched and the autoscaler scales as usual."""
    _site_admin_only(request)
    window = get_object_or_404(FreezeWindow.objects.select_related("pool"), id=window_id, pool_id=pool_id)
    try:
        freeze_window_lift(window_id=window.id, actor=request.user, reason=request.POST.get("reason", ""))
    except PlatformError as exc:
        return _detail(request, window.pool, error=f"Not lifted: {exc}", status=exc.status)
    # Leave the freeze at once rather than at the next sweep (as the API and the admin do).
    transaction.on_commit(lambda: pool_freeze_changed(pool_id=pool_id), robust=True)
    messages.success(request, f"Freeze window '{window.name}' lifted.")
    return redirect("pool-detail", pool_id=pool_id)


@login_required
@require_POST
def pool_settings(request: HttpRequest, pool_id: int) -> HttpResponse:
    _site_admin_only(request)
    pool = get_object_or_404(AgentPool, id=pool_id)
    form = PoolSettingsForm(request.POST, instance=AgentPool.objects.get(id=pool.id))
    if not form.is_valid():
        return _detail(request, pool, settings_form=form, error="Settings not saved: see the fields below.", status=400)
    try:
        pool_settings_update(pool_id=pool.id, actor=request.user, fields={f: form.cleaned_data[f] for f in PAGE_FIELDS})
    except Invalid as exc:
        for field, problems in (exc.fields or {}).items():
            form.add_error(field if field in form.fields else None, problems)
        return _detail(request, pool, settings_form=form, error=f"Settings not saved: {exc}", status=400)
    messages.success(request, "Pool settings saved.")
    return redirect("pool-detail", pool_id=pool.id)
