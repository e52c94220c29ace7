"""Serializers of the pools part of the user API."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from agents_app.models import K8S_RESOURCE_FIELDS, Agent, AgentPool, Slot
from agents_app.pods.k8s_fields import resource_problems
from tasks_app.serializers import StrictModelSerializer

# The pool's bounds on every wait, in seconds (defaults: the IAC_*_SECONDS settings).
BOUND_FIELDS = [
    "plan_timeout_seconds", "apply_timeout_seconds", "no_agent_timeout_seconds", "apply_pending_timeout_seconds",
    "plan_kill_grace_seconds", "apply_kill_grace_seconds",
]
# Where and how the `kubernetes` backend runs the pool's pods (ignored by the other backends).
K8S_FIELDS = ["k8s_namespace", "k8s_image", *K8S_RESOURCE_FIELDS, "k8s_service_account", "k8s_node_selector"]


class PoolSerializer(StrictModelSerializer):
    class Meta:
        model = AgentPool
        fields = ["id", "name", "backend", "min_replicas", "max_replicas", "slots_per_pod", "warm_apply",
                  *BOUND_FIELDS, *K8S_FIELDS, "created_at"]
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

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        instance: AgentPool | None = self.instance
        low = attrs.get("min_replicas", instance.min_replicas if instance else 1)
        high = attrs.get("max_replicas", instance.max_replicas if instance else 10)
        if low > high:
            field = "max_replicas" if "max_replicas" in attrs else "min_replicas"
            raise serializers.ValidationError({field: f"min_replicas ({low}) must not exceed max_replicas ({high})"})
        resources = {f: attrs.get(f, getattr(instance, f) if instance else AgentPool._meta.get_field(f).default)
                     for f in K8S_RESOURCE_FIELDS}
        if problems := resource_problems(resources):
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
        fields = ["id", "name", "status", "last_heartbeat_at", "version", "slots", "warm_dirs"]
        read_only_fields = fields
