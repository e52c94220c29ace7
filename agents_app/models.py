from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from agents_app.pods.k8s_fields import (
    resource_problems,
    validate_dns1123_label,
    validate_dns1123_subdomain,
    validate_image,
    validate_node_selector,
    validate_quantity,
)
from agents_app.protocol import AgentStatus, SlotState, choices


def hash_token(token: str) -> str:
    # Tokens are 256-bit random strings: a fast hash is enough (no dictionary to defend against).
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str) -> tuple[str, str]:
    token = f"{prefix}-{secrets.token_urlsafe(32)}"
    return token, hash_token(token)


# The defaults of a new pool's bounds come from the IAC_*_SECONDS settings (callables: read
# when a pool is created, not when this module is imported).
def default_plan_timeout() -> int:
    return settings.IAC_PLAN_TIMEOUT_SECONDS


def default_apply_timeout() -> int:
    return settings.IAC_APPLY_TIMEOUT_SECONDS


def default_no_agent_timeout() -> int:
    return settings.IAC_NO_AGENT_TIMEOUT_SECONDS


def default_apply_pending_timeout() -> int:
    return settings.IAC_APPLY_PENDING_TIMEOUT_SECONDS


def default_plan_kill_grace() -> int:
    return settings.IAC_PLAN_KILL_GRACE_SECONDS


def default_apply_kill_grace() -> int:
    return settings.IAC_APPLY_KILL_GRACE_SECONDS


_AT_LEAST_ONE = [MinValueValidator(1, "must be a positive number of seconds (at least 1)")]
_ZERO_OR_MORE = [MinValueValidator(0, "must be 0 (off) or a positive number of seconds")]


K8S_RESOURCE_FIELDS = ["k8s_cpu_request", "k8s_cpu_limit", "k8s_memory_request", "k8s_memory_limit"]


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
    # The teams whose workspaces may run on this pool (a site admin's setting).
    teams = models.ManyToManyField("auth.Group", blank=True, related_name="pools")
    # A bound on every wait (the sweep's `bounds` step fires them, each with a message on the run).
    plan_timeout_seconds = models.PositiveIntegerField(
        default=default_plan_timeout, validators=_AT_LEAST_ONE,
        help_text="a plan running longer is interrupted (SIGINT, then SIGKILL after the plan kill grace); the run errors",
    )
    apply_timeout_seconds = models.PositiveIntegerField(
        default=default_apply_timeout, validators=_AT_LEAST_ONE,
        help_text="an apply running longer gets SIGINT only (terraform stops at a safe point, saves state, "
                  "unlocks); SIGKILL only after the apply kill grace",
    )
    no_agent_timeout_seconds = models.PositiveIntegerField(
        default=default_no_agent_timeout, validators=_AT_LEAST_ONE,
        help_text="a queued plan or apply errors when no agent of the pool that could take it is online for this long",
    )
    apply_pending_timeout_seconds = models.PositiveIntegerField(
        default=default_apply_pending_timeout, validators=_ZERO_OR_MORE,
        help_text="a run waiting for Confirm longer is discarded (0: never)",
    )
    plan_kill_grace_seconds = models.PositiveIntegerField(
        default=default_plan_kill_grace, validators=_AT_LEAST_ONE,
        help_text="after a plan's bound: SIGINT, then SIGKILL after this long",
    )
    apply_kill_grace_seconds = models.PositiveIntegerField(
        default=default_apply_kill_grace, validators=_AT_LEAST_ONE,
        help_text="after an apply's bound: SIGINT, then SIGKILL only after this long",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # The `kubernetes` backend (agents_app/pods/kubernetes.py): where and how a pool's pods run.
    # Ignored by the other backends. Empty resource fields set no request/limit.
    k8s_namespace = models.CharField(
        "Kubernetes namespace", max_length=63, default="iac-agents", validators=[validate_dns1123_label],
        help_text="kubernetes backend: the namespace of the pool's pods and token Secret (the platform's "
                  "service account needs the Role of deploy/kubernetes/rbac.yaml there)",
    )
    k8s_image = models.CharField(
        "agent image", max_length=500, default="iac-agent:latest", validators=[validate_image],
        help_text="kubernetes backend: the agent image (deploy/Dockerfile.agent)",
    )
    k8s_cpu_request = models.CharField("CPU request", max_length=32, blank=True, default="500m",
                                       validators=[validate_quantity])
    k8s_cpu_limit = models.CharField("CPU limit", max_length=32, blank=True, default="",
                                     validators=[validate_quantity])
    k8s_memory_request = models.CharField("memory request", max_length=32, blank=True, default="512Mi",
                                          validators=[validate_quantity])
    k8s_memory_limit = models.CharField("memory limit", max_length=32, blank=True, default="2Gi",
                                        validators=[validate_quantity])
    k8s_service_account = models.CharField(
        "service account", max_length=253, blank=True, default="", validators=[validate_dns1123_subdomain],
        help_text="kubernetes backend: the pods' service account (empty: the namespace's default)",
    )
    k8s_node_selector = models.JSONField(
        "node selector", default=dict, blank=True, validators=[validate_node_selector],
        help_text='kubernetes backend: label → value the nodes must carry, e.g. {"kubernetes.io/arch": "amd64"}',
    )

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        problems = resource_problems({f: getattr(self, f) for f in K8S_RESOURCE_FIELDS})
        if problems:
            raise ValidationError(problems)


class Agent(models.Model):
    pool = models.ForeignKey(AgentPool, on_delete=models.CASCADE, related_name="agents")
    name = models.CharField(max_length=200)
    token_hash = models.CharField(max_length=64, unique=True)
    status = models.CharField(max_length=20, choices=choices(AgentStatus), default=AgentStatus.ONLINE)
    version = models.CharField(max_length=50, blank=True)
    # The terraform version the agent runs: a plan file is applied only by the same version.
    terraform_version = models.CharField(max_length=50, blank=True)
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


class Slot(models.Model):
    """One of an agent's job places. The source of truth for a run's warm reservation: a
    slot `reserved` for a task holds that task's warm dir on its agent. Nothing else stores
    the reservation; the constraints below keep a slot's state and its links consistent.
    Changed only by agents_app.services.slots.slot_transition."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="slots")
    index = models.PositiveSmallIntegerField()
    state = models.CharField(max_length=20, choices=choices(SlotState), default=SlotState.IDLE)
    job = models.ForeignKey("tasks_app.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="slots")
    task = models.ForeignKey("tasks_app.Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="slots")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "index"], name="slot_agent_index"),
            # idle: nothing; running: a job (of a task); reserved: a task's warm dir, no job.
            models.CheckConstraint(
                condition=(
                    Q(state=SlotState.IDLE, job__isnull=True, task__isnull=True)
                    | Q(state=SlotState.RUNNING, job__isnull=False, task__isnull=False)
                    | Q(state=SlotState.RESERVED, job__isnull=True, task__isnull=False)
                ),
                name="slot_state_links",
            ),
            # A run is reserved in at most one slot, and a job runs in at most one.
            models.UniqueConstraint(fields=["task"], condition=Q(state=SlotState.RESERVED), name="one_reservation_per_task"),
            models.UniqueConstraint(fields=["job"], condition=Q(job__isnull=False), name="one_slot_per_job"),
        ]
        ordering = ["agent_id", "index"]
        indexes = [models.Index(fields=["agent", "state"], name="slot_agent_state")]

    def __str__(self) -> str:
        return f"{self.agent.name}#{self.index} {self.state}"


class DispatchEvent(models.Model):
    """One row per state change of a job, slot or warmup (the run's are TaskEvents)."""

    subject = models.CharField(max_length=20)  # "job", "slot", "warmup"
    subject_id = models.PositiveBigIntegerField()
    task = models.ForeignKey("tasks_app.Task", null=True, blank=True, on_delete=models.CASCADE, related_name="dispatch_events")
    agent = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    from_state = models.CharField(max_length=30, blank=True)
    to_state = models.CharField(max_length=30)
    message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["subject", "subject_id"], name="dispatch_event_subject")]

    def __str__(self) -> str:
        return f"{self.subject} {self.subject_id}: {self.from_state} -> {self.to_state}"
