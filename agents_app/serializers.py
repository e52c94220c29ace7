"""Serializers of the pools part of the user API."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from agents_app.models import Agent, AgentPool, FreezeWindow, Slot
from tasks_app.serializers import StrictModelSerializer

# The pool's bounds on every wait, in seconds (defaults: the IAC_*_SECONDS settings).
BOUND_FIELDS = [
    "plan_timeout_seconds", "apply_timeout_seconds", "no_agent_timeout_seconds", "apply_pending_timeout_seconds",
    "plan_kill_grace_seconds", "apply_kill_grace_seconds",
]


class PoolSerializer(StrictModelSerializer):
    frozen_until = serializers.SerializerMethodField(
        help_text="the end of the pool's current freeze (its freeze windows, merged); null: not frozen")

    class Meta:
        model = AgentPool
        fields = ["id", "name", "backend", "min_replicas", "max_replicas", "slots_per_pod", "warm_apply",
                  *BOUND_FIELDS, "frozen_until", "created_at"]
        read_only_fields = ["id", "created_at"]
        # A pod with no slot could never run anything, yet it would count towards max_replicas.
        extra_kwargs = {
            "slots_per_pod": {"min_value": 1},
            # DRF turns the model's MinValueValidator into min_value; its words are ours.
            **{name: {"error_messages": {"min_value": "must be a positive number of seconds (at least 1)"}}
               for name in BOUND_FIELDS},
            "apply_pending_timeout_seconds": {
                "error_messages": {"min_value": "must be 0 (off) or a positive number of seconds"},
            },
        }

    def get_frozen_until(self, obj: AgentPool) -> str | None:
        from agents_app.services.freeze import pool_frozen_until

        until = pool_frozen_until(obj)
        return serializers.DateTimeField().to_representation(until) if until else None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        instance: AgentPool | None = self.instance
        low = attrs.get("min_replicas", instance.min_replicas if instance else 1)
        high = attrs.get("max_replicas", instance.max_replicas if instance else 10)
        if low > high:
            field = "max_replicas" if "max_replicas" in attrs else "min_replicas"
            raise serializers.ValidationError({field: f"min_replicas ({low}) must not exceed max_replicas ({high})"})
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
        fields = ["id", "name", "status", "last_heartbeat_at", "version", "slots", "warm_dirs"]
        read_only_fields = fields


class FreezeWindowSerializer(StrictModelSerializer):
    """A freeze window of a pool. Writes are checked by the service (the same words as the
    admin: agents_app.models.freeze_window_errors)."""

    lifted_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
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
        from django.utils import timezone

        from agents_app.services.freeze import window_active_occurrence

        active = window_active_occurrence(obj, timezone.now()) if obj.enabled else None
        return serializers.DateTimeField().to_representation(active.end) if active else None


class FreezeLiftSerializer(serializers.Serializer):
    reason = serializers.CharField(help_text="why the window is lifted early (audited)")
