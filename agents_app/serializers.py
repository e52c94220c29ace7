"""Serializers of the pools part of the user API."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agents_app.models import (
    K8S_RESOURCE_FIELDS,
    POOL_LIMITS,
    WEEKDAYS,
    Agent,
    AgentPool,
    FreezeWindow,
    Pod,
    ScalingDecision,
    pool_settings_problems,
)
from agents_app.pods.k8s_fields import resource_problems
from agents_app.services.freeze import pool_frozen_until, window_active_occurrence
from tasks_app.dispatch.models import Slot
from tasks_app.serializers import StrictModelSerializer

# The pool's bounds on every wait, in seconds (defaults: the IAC_*_SECONDS settings).
BOUND_FIELDS = [
    "plan_timeout_seconds", "apply_timeout_seconds", "no_agent_timeout_seconds", "apply_pending_timeout_seconds",
    "plan_kill_grace_seconds", "apply_kill_grace_seconds",
]
# Where and how the `kubernetes` backend runs the pool's pods (ignored by the other backends).
K8S_FIELDS = ["k8s_namespace", "k8s_image", *K8S_RESOURCE_FIELDS, "k8s_service_account", "k8s_node_selector"]


# The autoscaler's settings: each within POOL_LIMITS (the model's validators, the admin's form
# and agent registration use the same numbers).
SCALING_FIELDS = [
    "scale_up_delay_seconds", "scale_down_delay_seconds", "cooldown_seconds", "warmup_expire_seconds",
    "warmup_max_retries", "pod_start_wait_seconds", "pod_register_deadline_seconds",
]


def _limit_messages(field: str) -> dict[str, Any]:
    low, high = POOL_LIMITS[field]
    words = f"must be between {low} and {high}"
    return {"error_messages": {"min_value": words, "max_value": words}}


class PoolSerializer(StrictModelSerializer):
    frozen_until = serializers.SerializerMethodField(
        help_text="the end of the pool's current freeze (its freeze windows, merged); null: not frozen")

    class Meta:
        model = AgentPool
        fields = ["id", "name", "backend", "min_replicas", "max_replicas", "slots_per_pod", "warm_apply",
                  "drift_schedule", "drift_timezone", *SCALING_FIELDS, *BOUND_FIELDS, *K8S_FIELDS, "frozen_until", "created_at"]
        read_only_fields = ["id", "created_at"]
        # A pod with no slot could never run anything, yet it would count towards max_replicas.
        extra_kwargs = {
            **{name: _limit_messages(name) for name in POOL_LIMITS},
            # DRF turns the model's MinValueValidator into min_value; its words are ours.
            **{name: {"error_messages": {"min_value": "must be a positive number of seconds (at least 1)"}}
               for name in BOUND_FIELDS},
            "apply_pending_timeout_seconds": {
                "error_messages": {"min_value": "must be 0 (off) or a positive number of seconds"},
            },
        }

    def get_frozen_until(self, obj: AgentPool) -> str | None:
        until = pool_frozen_until(obj)
        return serializers.DateTimeField().to_representation(until) if until else None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        instance: AgentPool = self.instance or AgentPool()  # a new pool: the defaults
        values = {name: attrs.get(name, getattr(instance, name)) for name in POOL_LIMITS}
        problems = pool_settings_problems(values)
        # Name the field the request changed (a PATCH of min_replicas alone is about min_replicas).
        partners = {"max_replicas": "min_replicas", "warmup_expire_seconds": "scale_down_delay_seconds"}
        problems = {
            (partners[k] if k not in attrs and partners.get(k) in attrs else k): v for k, v in problems.items()
        }
        problems.update(resource_problems({f: attrs.get(f, getattr(instance, f)) for f in K8S_RESOURCE_FIELDS}))
        if problems:
            raise serializers.ValidationError(problems)
        return attrs


class PoolCreatedSerializer(PoolSerializer):
    token = serializers.CharField(read_only=True, help_text="the pool token for agents: shown this once, stored hashed")

    class Meta(PoolSerializer.Meta):
        fields = [*PoolSerializer.Meta.fields, "token"]


class SlotSerializer(serializers.ModelSerializer):
    class Meta:
        model = Slot
        fields = ["index", "state", "task"]
        read_only_fields = fields


class AgentSerializer(serializers.ModelSerializer):
    slots = SlotSerializer(many=True, read_only=True)

    class Meta:
        model = Agent
        fields = ["id", "name", "status", "last_heartbeat_at", "version", "slots", "warm_dirs", "provider_cache",
                  "warm_plan_workspaces"]
        read_only_fields = fields


@extend_schema_field({"type": "array", "items": {"type": "string", "enum": list(WEEKDAYS)}, "uniqueItems": True})
class WeekdaysField(serializers.JSONField):
    """A JSON list of weekdays; what it must hold for the window's kind, the service says."""


class FreezeWindowSerializer(StrictModelSerializer):
    """A freeze window of a pool. Writes are checked by the service (the same words as the
    admin: agents_app.models.freeze_window_errors)."""

    lifted_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    weekdays = WeekdaysField(required=False)
    active_until = serializers.SerializerMethodField(
        help_text="the end of this window's occurrence active now (null: not active)")

    class Meta:
        model = FreezeWindow
        fields = ["id", "pool", "name", "reason", "kind", "enabled", "weekdays", "start_time", "end_time", "time_zone",
                  "starts_at", "ends_at", "active_until", "lifted_at", "lifted_until", "lifted_by", "lift_reason",
                  "created_at", "updated_at"]
        read_only_fields = ["id", "pool", "lifted_at", "lifted_until", "lifted_by", "lift_reason", "created_at",
                            "updated_at"]
        extra_kwargs = {"time_zone": {"required": False}}

    def get_active_until(self, obj: FreezeWindow) -> str | None:
        active = window_active_occurrence(obj, timezone.now()) if obj.enabled else None
        return serializers.DateTimeField().to_representation(active.end) if active else None


class FreezeLiftSerializer(serializers.Serializer):
    reason = serializers.CharField(help_text="why the window is lifted early (audited)")
class PodSerializer(serializers.ModelSerializer):
    agent = serializers.CharField(source="agent.name", default=None, read_only=True)

    class Meta:
        model = Pod
        fields = ["id", "name", "backend", "backend_id", "phase", "agent", "created_at", "registered_at",
                  "last_seen_at", "gone_at", "message"]
        read_only_fields = fields


class ScalingDecisionSerializer(serializers.ModelSerializer):
    class Meta:
        model = ScalingDecision
        fields = ["id", "created_at", "action", "pods_before", "desired", "demand", "inputs", "pods_created",
                  "pods_deleted", "reason"]
        read_only_fields = fields
