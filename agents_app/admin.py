"""Admin for pools, agents and slots.

Token hashes are never editable: a pool's token is created (and rotated) by the service and
shown once. Agents and slots describe live processes, reported by their heartbeats, so they
are read-only here; marking an agent offline goes through the service (an action).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from agents_app.models import Agent, AgentPool, FreezeWindow, Pod, ScalingDecision, new_token
from agents_app.services.freeze import moment_text, pool_freeze
from agents_app.services.freeze_windows import (
    EDITABLE,
    freeze_window_create,
    freeze_window_delete,
    freeze_window_lift,
    freeze_window_update,
)
from agents_app.services.pool_settings import pool_token_rotate
from iacplatform.errors import PlatformError
from tasks_app.dispatch.agent_reports import agent_set_offline
from tasks_app.dispatch.models import DispatchEvent, Slot
from tasks_app.services.sweep import pool_freeze_changed


class AgentPoolForm(forms.ModelForm):
    def clean_k8s_node_selector(self) -> Any:
        # An emptied box is no selector ({}), not JSON null (the column is NOT NULL).
        value = self.cleaned_data.get("k8s_node_selector")
        return {} if value is None else value


@admin.register(AgentPool)
class AgentPoolAdmin(admin.ModelAdmin):
    form = AgentPoolForm
    list_display = ["name", "backend", "min_replicas", "max_replicas", "slots_per_pod", "warm_apply", "created_at"]
    list_filter = ["backend", "warm_apply"]
    search_fields = ["name"]
    exclude = ["token_hash"]
    actions = ["rotate_token"]
    fieldsets = [
        (None, {"fields": ["name", "backend", "min_replicas", "max_replicas", "slots_per_pod", "warm_apply", "teams"]}),
        ("Autoscaling (seconds; each within its bounds)", {"fields": [
            "scale_up_delay_seconds", "scale_down_delay_seconds", "cooldown_seconds", "warmup_expire_seconds",
            "warmup_max_retries", "pod_start_wait_seconds", "pod_register_deadline_seconds",
        ]}),
        ("Bounds on every wait (seconds)", {"fields": [
            "plan_timeout_seconds", "plan_kill_grace_seconds", "apply_timeout_seconds", "apply_kill_grace_seconds",
            "no_agent_timeout_seconds", "apply_pending_timeout_seconds",
        ]}),
        ("Freeze windows", {"fields": ["freeze_state"]}),
        ("Drift checks (the default of the pool's workspaces without a schedule of their own)",
         {"fields": ["drift_schedule", "drift_timezone"]}),
        ("Kubernetes backend (pods of a kubernetes pool)", {"classes": ["collapse"], "fields": [
            "k8s_namespace", "k8s_image", ("k8s_cpu_request", "k8s_cpu_limit"),
            ("k8s_memory_request", "k8s_memory_limit"), "k8s_service_account", "k8s_node_selector",
        ]}),
    ]
    readonly_fields = ["freeze_state"]

    @admin.display(description="Frozen now")
    def freeze_state(self, obj: AgentPool) -> str:
        if obj.pk is None:
            return "-"
        return freeze_summary(obj)

    def save_model(self, request: HttpRequest, obj: AgentPool, form: forms.ModelForm, change: bool) -> None:
        if not change:
            # Only the hash is stored, so the plain token can be shown this once and never again.
            token, _ = new_token("pool")
            obj.set_token(token)  # the hash checks agents; the encrypted copy starts pods
            super().save_model(request, obj, form, change)
            self.message_user(
                request, f"Pool token for {obj.name} (shown once, store it now): {token}", messages.WARNING
            )
            return
        super().save_model(request, obj, form, change)

    @admin.action(description="Rotate the pool token (its agents' tokens are revoked; they must register again)")
    def rotate_token(self, request: HttpRequest, queryset: QuerySet[AgentPool]) -> None:
        for pool in queryset:
            token = pool_token_rotate(pool=pool, actor=request.user)
            self.message_user(request, f"New token for {pool.name} (shown once): {token}", messages.WARNING)


class SlotInline(admin.TabularInline):
    model = Slot
    fields = ["index", "state", "task", "job", "updated_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ["name", "pool", "status", "version", "terraform_version", "slot_count", "last_heartbeat_at",
                    "offline_at", "provider_cache_summary"]
    list_filter = ["pool", "status"]
    search_fields = ["name"]
    exclude = ["token_hash"]
    inlines = [SlotInline]
    actions = ["mark_offline"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # agents join by registering with their pool token

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Its jobs, slots and events refer to it; an agent that is gone is marked offline.
        return False

    @admin.display(description="provider cache")
    def provider_cache_summary(self, agent: Agent) -> str:
        """Size, entries, hits and misses of the agent's provider cache (its last heartbeat)."""
        cache = agent.provider_cache or {}
        if not cache:
            return "none"
        return (f"{cache.get('size_bytes', 0) / 2**20:.1f} MiB, {cache.get('entries', 0)} entries, "
                f"{cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses")

    @admin.action(description="Mark offline (release reservations, error running applies)")
    def mark_offline(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        for agent in queryset:
            if agent_set_offline(agent_id=agent.id, reason=f"marked offline by {request.user}"):
                self.message_user(request, f"{agent.name} marked offline", messages.SUCCESS)


@admin.register(Slot)
class SlotAdmin(admin.ModelAdmin):
    list_display = ["agent", "index", "state", "task", "job", "updated_at"]
    list_filter = ["state", "agent__pool"]
    list_select_related = ["agent", "agent__pool", "task", "job"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # slots live and die with their agent's registration


@admin.register(DispatchEvent)
class DispatchEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "subject", "subject_id", "from_state", "to_state", "task", "agent", "message"]
    list_filter = ["subject", "to_state"]
    list_select_related = ["task", "agent"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # history


def freeze_summary(pool: AgentPool) -> str:
    """Whether the pool is frozen now, until when, and its windows (links to edit them)."""
    state = pool_freeze(pool)
    if state.frozen:
        now = format_html("<strong>frozen until {} ({})</strong>", moment_text(state.until), state.window.name)
    elif state.next_start is not None:
        now = format_html("not frozen; next freeze {} ({})", moment_text(state.next_start), state.next_window.name)
    else:
        now = "not frozen; no freeze ahead"
    windows = format_html_join(
        ", ", '<a href="{}">{}</a>',
        ((reverse("admin:agents_app_freezewindow_change", args=[w.id]), w.name)
         for w in FreezeWindow.objects.filter(pool=pool).order_by("id")),
    )
    add = reverse("admin:agents_app_freezewindow_add") + f"?pool={pool.id}"
    return format_html('{}<br>windows: {} (<a href="{}">add one</a>)', now, windows or "none", add)


class FreezeWindowForm(forms.ModelForm):
    lift_now = forms.CharField(
        required=False, label="Lift now, because",
        help_text="a reason here lifts the window's active occurrence now (audited); the next one freezes again",
    )

    class Meta:
        model = FreezeWindow
        fields = ["pool", *EDITABLE]


@admin.register(FreezeWindow)
class FreezeWindowAdmin(admin.ModelAdmin):
    """Changes go through the services (checked, audited), and the pool acts on them at once."""

    form = FreezeWindowForm
    list_display = ["name", "pool", "kind", "enabled", "schedule", "lifted_at", "lifted_by"]
    list_filter = ["pool", "kind", "enabled"]
    readonly_fields = ["lifted_at", "lifted_until", "lifted_by", "lift_reason"]
    fieldsets = [
        (None, {"fields": ["pool", "name", "reason", "kind", "enabled"]}),
        ("weekly", {"fields": ["weekdays", "start_time", "end_time", "time_zone"]}),
        ("one_off", {"fields": ["starts_at", "ends_at"]}),
        ("Early lift", {"fields": ["lift_now", "lifted_at", "lifted_until", "lifted_by", "lift_reason"]}),
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # A window belongs to its pool for good: another pool gets a window of its own.
        return [*self.readonly_fields, "pool"] if obj is not None else list(self.readonly_fields)

    @admin.display(description="schedule")
    def schedule(self, obj: FreezeWindow) -> str:
        if obj.kind == "one_off":
            return f"{obj.starts_at:%Y-%m-%d %H:%M} - {obj.ends_at:%Y-%m-%d %H:%M} UTC"
        return f"{','.join(obj.weekdays)} {obj.start_time:%H:%M}-{obj.end_time:%H:%M} {obj.time_zone}"

    def save_model(self, request: HttpRequest, obj: FreezeWindow, form: forms.ModelForm, change: bool) -> None:
        fields = {name: form.cleaned_data[name] for name in EDITABLE if name in form.cleaned_data}
        if change:
            fields = {name: value for name, value in fields.items() if name in form.changed_data}
            window = freeze_window_update(window=obj, actor=request.user, fields=fields)
        else:
            window = freeze_window_create(pool=form.cleaned_data["pool"], actor=request.user, fields=fields)
        obj.pk = window.pk
        reason = form.cleaned_data.get("lift_now", "").strip()
        if reason:
            try:
                freeze_window_lift(window_id=window.id, actor=request.user, reason=reason)
            except PlatformError as exc:
                self.message_user(request, str(exc), messages.ERROR)
        pool_id = window.pool_id
        transaction.on_commit(lambda: pool_freeze_changed(pool_id=pool_id), robust=True)

    def delete_model(self, request: HttpRequest, obj: FreezeWindow) -> None:
        pool_id = obj.pool_id
        freeze_window_delete(window=obj, actor=request.user)
        transaction.on_commit(lambda: pool_freeze_changed(pool_id=pool_id), robust=True)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[FreezeWindow]) -> None:
        for window in queryset:
            self.delete_model(request, window)
class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # history; pods are removed by the autoscaler


@admin.register(Pod)
class PodAdmin(_ReadOnly):
    list_display = ["name", "pool", "backend", "phase", "backend_id", "agent", "created_at", "registered_at",
                    "last_seen_at", "gone_at", "message"]
    list_filter = ["phase", "pool", "backend"]
    list_select_related = ["pool", "agent"]
    search_fields = ["name"]


@admin.register(ScalingDecision)
class ScalingDecisionAdmin(_ReadOnly):
    list_display = ["created_at", "pool", "action", "pods_before", "desired", "demand", "pods_created",
                    "pods_deleted", "reason"]
    list_filter = ["action", "pool"]
    list_select_related = ["pool"]
