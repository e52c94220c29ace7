"""Admin for pools, agents and slots.

Token hashes are never editable: a pool's token is created (and rotated) by the service and
shown once. Agents and slots describe live processes, reported by their heartbeats, so they
are read-only here; marking an agent offline goes through the service (an action).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from agents_app.models import Agent, AgentPool, DispatchEvent, Slot, new_token
from tasks_app.services.control import agent_set_offline, pool_token_rotate


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
        ("Bounds on every wait (seconds)", {"fields": [
            "plan_timeout_seconds", "plan_kill_grace_seconds", "apply_timeout_seconds", "apply_kill_grace_seconds",
            "no_agent_timeout_seconds", "apply_pending_timeout_seconds",
        ]}),
        ("Kubernetes backend (pods of a kubernetes pool)", {"classes": ["collapse"], "fields": [
            "k8s_namespace", "k8s_image", ("k8s_cpu_request", "k8s_cpu_limit"),
            ("k8s_memory_request", "k8s_memory_limit"), "k8s_service_account", "k8s_node_selector",
        ]}),
    ]

    def save_model(self, request: HttpRequest, obj: AgentPool, form: forms.ModelForm, change: bool) -> None:
        if not change:
            # Only the hash is stored, so the plain token can be shown this once and never again.
            token, obj.token_hash = new_token("pool")
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
                    "offline_at"]
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
