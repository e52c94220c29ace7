from __future__ import annotations

import hashlib
import secrets

from django.db import models


def hash_token(token: str) -> str:
    # Tokens are 256-bit random strings: a fast hash is enough (no dictionary to defend against).
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str) -> tuple[str, str]:
    token = f"{prefix}-{secrets.token_urlsafe(32)}"
    return token, hash_token(token)


class PoolBackend(models.TextChoices):
    LOCAL = "local"
    KUBERNETES = "kubernetes"
    STATIC = "static"


class AgentPool(models.Model):
    name = models.SlugField(max_length=100, unique=True)
    token_hash = models.CharField(max_length=64, db_index=True)
    backend = models.CharField(max_length=20, choices=PoolBackend.choices, default=PoolBackend.LOCAL)
    min_replicas = models.PositiveIntegerField(default=1)
    max_replicas = models.PositiveIntegerField(default=10)
    slots_per_pod = models.PositiveIntegerField(default=3)
    # Off = every apply takes the cold path (no kept dirs, no warmups). Used as the baseline.
    warm_apply = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class AgentStatus(models.TextChoices):
    ONLINE = "online"
    OFFLINE = "offline"


class Agent(models.Model):
    pool = models.ForeignKey(AgentPool, on_delete=models.CASCADE, related_name="agents")
    name = models.CharField(max_length=200)
    token_hash = models.CharField(max_length=64, unique=True)
    status = models.CharField(max_length=20, choices=AgentStatus.choices, default=AgentStatus.ONLINE)
    version = models.CharField(max_length=50, blank=True)
    slot_count = models.PositiveIntegerField(default=3)
    registered_at = models.DateTimeField(auto_now_add=True)
    last_heartbeat_at = models.DateTimeField()
    offline_at = models.DateTimeField(null=True, blank=True)
    # What the agent last said it holds on disk: [{"task": id, "plan_hash": "..."}].
    warm_dirs = models.JSONField(default=list, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "last_heartbeat_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.pool})"


class SlotState(models.TextChoices):
    IDLE = "idle"
    RUNNING = "running"
    RESERVED = "reserved"


class Slot(models.Model):
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="slots")
    index = models.PositiveSmallIntegerField()
    state = models.CharField(max_length=20, choices=SlotState.choices, default=SlotState.IDLE)
    job = models.ForeignKey("tasks_app.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    task = models.ForeignKey("tasks_app.Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["agent", "index"], name="slot_agent_index")]
        ordering = ["agent_id", "index"]

    def __str__(self) -> str:
        return f"{self.agent.name}#{self.index} {self.state}"
