from __future__ import annotations

import hashlib
import secrets
import zoneinfo
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from agents_app.pods.k8s_fields import (
    resource_problems,
    validate_dns1123_label,
    validate_dns1123_subdomain,
    validate_image,
    validate_node_selector,
    validate_quantity,
)
from agents_app.protocol import AgentStatus, PodPhase, choices
from iacplatform import crypto
from tasks_app.workflows.schedules import schedule_problem, timezone_problem


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


def default_scale_up_delay() -> int:
    return settings.IAC_SCALE_UP_DELAY_SECONDS


def default_scale_down_delay() -> int:
    return settings.IAC_SCALE_DOWN_DELAY_SECONDS


def default_cooldown() -> int:
    return settings.IAC_SCALE_COOLDOWN_SECONDS


def default_warmup_expire() -> int:
    return int(settings.IAC_WARMUP_EXPIRE_SECONDS)


def default_warmup_max_retries() -> int:
    return settings.IAC_WARMUP_MAX_RETRIES


def default_pod_start_wait() -> int:
    return settings.IAC_POD_START_WAIT_SECONDS


def default_pod_register_deadline() -> int:
    return settings.IAC_POD_REGISTER_DEADLINE_SECONDS


# Every pool setting has bounds: (lowest, highest). The same numbers are the fields'
# validators (so the admin's form and the API's serializer check them), the agent's
# registration (`slots`, see agents.agent_register) and the IAC_* defaults in settings.py.
# Without them the API accepted slots_per_pod 214813330, after which the pool's agent was
# refused at registration and `manage.py up` could not start.
DAY = 24 * 3600
POOL_LIMITS: dict[str, tuple[int, int]] = {
    "min_replicas": (0, 100),
    "max_replicas": (1, 100),
    "slots_per_pod": (1, 16),
    "scale_up_delay_seconds": (0, DAY),
    "scale_down_delay_seconds": (1, 7 * DAY),
    "cooldown_seconds": (0, 7 * DAY),
    "warmup_expire_seconds": (1, 7 * DAY),
    "warmup_max_retries": (1, 10),
    "pod_start_wait_seconds": (1, DAY),
    "pod_register_deadline_seconds": (1, DAY),
}


def _limits(field: str, unit: str = "") -> list:
    low, high = POOL_LIMITS[field]
    words = f"must be between {low} and {high}{unit}"
    return [MinValueValidator(low, words), MaxValueValidator(high, words)]


def pool_settings_problems(values: dict[str, Any]) -> dict[str, str]:
    """What is wrong with a pool's settings taken together, {field: message} (empty: fine).
    The one check the API, the admin and the model share; each field's own range is its
    validators'."""
    problems: dict[str, str] = {}
    low, high = values.get("min_replicas"), values.get("max_replicas")
    if low is not None and high is not None and low > high:
        problems["max_replicas"] = f"min_replicas ({low}) must not exceed max_replicas ({high})"
    expire, down = values.get("warmup_expire_seconds"), values.get("scale_down_delay_seconds")
    if expire is not None and down is not None and expire <= down:
        # The design note's constraint: a warm dir must outlive the scale-down delay, or the
        # autoscaler would be free to remove the pod of a reservation that is still valid.
        problems["warmup_expire_seconds"] = (
            f"the warmup expiry ({expire}s) must be longer than the scale-down delay ({down}s): otherwise pods "
            f"holding warm dirs that are still valid could be scaled away"
        )
    return problems


_AT_LEAST_ONE = [MinValueValidator(1, "must be a positive number of seconds (at least 1)")]
_ZERO_OR_MORE = [MinValueValidator(0, "must be 0 (off) or a positive number of seconds")]


K8S_RESOURCE_FIELDS = ["k8s_cpu_request", "k8s_cpu_limit", "k8s_memory_request", "k8s_memory_limit"]


class PoolBackend(models.TextChoices):
    LOCAL = "local"
    KUBERNETES = "kubernetes"
    STATIC = "static"


def _drift_schedule_valid(value: str) -> None:
    if problem := schedule_problem(value):
        raise ValidationError(problem)


def _drift_timezone_valid(value: str) -> None:
    if problem := timezone_problem(value):
        raise ValidationError(problem)


class AgentPool(models.Model):
    name = models.SlugField(max_length=100, unique=True)
    token_hash = models.CharField(max_length=64, db_index=True)
    backend = models.CharField(max_length=20, choices=PoolBackend.choices, default=PoolBackend.LOCAL)
    min_replicas = models.PositiveIntegerField(default=1, validators=_limits("min_replicas"))
    max_replicas = models.PositiveIntegerField(default=10, validators=_limits("max_replicas"))
    slots_per_pod = models.PositiveIntegerField(default=3, validators=_limits("slots_per_pod"))
    # The autoscaler (agents_app/services/autoscaler.py); defaults from the IAC_* settings.
    scale_up_delay_seconds = models.PositiveIntegerField(
        default=default_scale_up_delay, validators=_limits("scale_up_delay_seconds", "s"),
        help_text="demand from warm reservations alone adds pods only after this long (queued plans and "
                  "applies add pods at once)",
    )
    scale_down_delay_seconds = models.PositiveIntegerField(
        default=default_scale_down_delay, validators=_limits("scale_down_delay_seconds", "s"),
        help_text="pods are removed only after demand stayed lower this long, and no job of the pool ran within it",
    )
    cooldown_seconds = models.PositiveIntegerField(
        default=default_cooldown, validators=_limits("cooldown_seconds", "s"),
        help_text="no scale-down within this long of the last scaling action",
    )
    warmup_expire_seconds = models.PositiveIntegerField(
        default=default_warmup_expire, validators=_limits("warmup_expire_seconds", "s"),
        help_text="a warm dir not confirmed within this long expires (must be longer than the scale-down delay)",
    )
    warmup_max_retries = models.PositiveIntegerField(
        default=default_warmup_max_retries, validators=_limits("warmup_max_retries"),
        help_text="failed warmups of a run before it is no longer warmed up (nor counted as demand)",
    )
    pod_start_wait_seconds = models.PositiveIntegerField(
        default=default_pod_start_wait, validators=_limits("pod_start_wait_seconds", "s"),
        help_text="a queued plan waits this long for a new pod before the oldest reservation is released",
    )
    pod_register_deadline_seconds = models.PositiveIntegerField(
        default=default_pod_register_deadline, validators=_limits("pod_register_deadline_seconds", "s"),
        help_text="a pod whose agent has not registered within this long is replaced",
    )
    # The plain pool token, encrypted (iacplatform.crypto, like sensitive variables): the
    # autoscaler needs it to start pods (an agent's environment, a Kubernetes Secret). Set
    # by pool_create / pool_rotate_token; a pool from before has none until its token is
    # rotated (its scaling decisions say so).
    token_encrypted = models.BinaryField(null=True, blank=True, editable=False)
    # The autoscaler's memory between ticks (not a status: what it waits for, since when).
    scale_down_wanted_since = models.DateTimeField(null=True, blank=True, editable=False)
    warm_up_wanted_since = models.DateTimeField(null=True, blank=True, editable=False)
    last_scaled_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Off = every apply takes the cold path (no kept dirs, no warmups). Used as the baseline.
    warm_apply = models.BooleanField(default=True)
    # The drift check schedule of the pool's workspaces that have none of their own
    # (tasks_app/workflows/schedules.py): "" takes the site's IAC_DRIFT_SCHEDULE, "off" none.
    drift_schedule = models.CharField(
        max_length=100, blank=True, validators=[_drift_schedule_valid],
        help_text="drift checks of the pool's workspaces without a schedule of their own: a 5-field cron "
                  "expression ('0 6 * * *'), 'off', or empty for the site's default",
    )
    drift_timezone = models.CharField(max_length=64, default="UTC", validators=[_drift_timezone_valid],
                                      help_text="the IANA time zone of drift_schedule")
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
        problems = pool_settings_problems({f: getattr(self, f) for f in POOL_LIMITS})
        problems.update(resource_problems({f: getattr(self, f) for f in K8S_RESOURCE_FIELDS}))
        if problems:
            raise ValidationError(problems)

    def set_token(self, token: str) -> None:
        self.token_hash = hash_token(token)
        self.token_encrypted = crypto.encrypt(token.encode())

    def plain_token(self) -> str:
        """The pool token, or "" when only its hash is known (a pool from before)."""
        return crypto.decrypt(bytes(self.token_encrypted)).decode() if self.token_encrypted else ""


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
    # Its provider cache, as its last heartbeat said: {"size_bytes", "entries", "hits",
    # "misses", "installs"}; {} when it has none (or is older than the cache).
    provider_cache = models.JSONField(default=dict, blank=True)
    # The workspaces whose warm plan dirs it holds: a queued plan of one of them prefers it.
    warm_plan_workspaces = models.JSONField(default=list, blank=True)
    # The agent's version of that list (it bumps it with every change; 0 at registration):
    # a report older than the one recorded does not overwrite it.
    warm_plans_version = models.PositiveBigIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["status", "last_heartbeat_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.pool})"


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = datetime.weekday()


class FreezeKind(models.TextChoices):
    WEEKLY = "weekly"
    ONE_OFF = "one_off"


class FreezeWindow(models.Model):
    """A time in which the pool runs nothing new (agents_app.services.freeze evaluates it).

    weekly: on each of `weekdays`, from `start_time` to `end_time`, wall-clock time in
    `time_zone` (IANA). An end not after the start ends the next day (22:00-06:00 crosses
    midnight); an end equal to the start lasts 24 hours. one_off: from `starts_at` to
    `ends_at`. A site admin may lift the occurrence that is active now (`lifted_at`): it
    ends then, and the next occurrence freezes again."""

    pool = models.ForeignKey(AgentPool, on_delete=models.CASCADE, related_name="freeze_windows")
    name = models.CharField(max_length=100, help_text="shown in waiting reasons: frozen until … (name)")
    reason = models.TextField(blank=True)
    kind = models.CharField(max_length=10, choices=FreezeKind.choices, default=FreezeKind.WEEKLY)
    enabled = models.BooleanField(default=True)
    weekdays = models.JSONField(default=list, blank=True, help_text=f"weekly: a list of {', '.join(WEEKDAYS)}")
    start_time = models.TimeField(null=True, blank=True, help_text="weekly: local time in the time zone")
    end_time = models.TimeField(null=True, blank=True,
                                help_text="weekly: not after the start time = the next day; equal = 24 hours")
    time_zone = models.CharField(max_length=64, default="UTC", help_text="weekly: an IANA time zone, e.g. Europe/Berlin")
    starts_at = models.DateTimeField(null=True, blank=True, help_text="one_off")
    ends_at = models.DateTimeField(null=True, blank=True, help_text="one_off")
    # The early lift of one occurrence: it ends at `lifted_at` instead of `lifted_until`.
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_until = models.DateTimeField(null=True, blank=True,
                                        help_text="the end the lifted occurrence would have had")
    lifted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    lift_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["pool_id", "id"]
        indexes = [models.Index(fields=["pool", "enabled"], name="freeze_window_pool")]

    def __str__(self) -> str:
        return f"{self.name} ({self.pool})"

    def clean(self) -> None:
        errors = freeze_window_errors(self)
        if errors:
            raise ValidationError(errors)


def freeze_window_errors(window: FreezeWindow) -> dict[str, list[str]]:
    """What is wrong with a window, by field (empty: nothing). The admin and the API say it."""
    errors: dict[str, list[str]] = {}

    def add(field: str, message: str) -> None:
        errors.setdefault(field, []).append(message)

    if not (window.name or "").strip():
        add("name", "a window needs a name (it is shown in waiting reasons)")
    if window.kind == FreezeKind.WEEKLY:
        days = window.weekdays
        if not isinstance(days, list):
            add("weekdays", f'weekdays must be a list such as ["sat", "sun"] (of {", ".join(WEEKDAYS)})')
        elif not days:
            add("weekdays", f"a weekly window needs at least one weekday ({', '.join(WEEKDAYS)})")
        else:
            unknown = [d for d in days if d not in WEEKDAYS]
            if unknown:
                add("weekdays", f"unknown weekday {unknown[0]!r}: use {', '.join(WEEKDAYS)}")
            elif len(set(days)) != len(days):
                add("weekdays", "a weekday is listed twice")
        if window.start_time is None:
            add("start_time", "a weekly window needs a start time (HH:MM)")
        if window.end_time is None:
            add("end_time", "a weekly window needs an end time (HH:MM; not after the start: the next day)")
        if window.time_zone not in _time_zones():
            add("time_zone", f"unknown time zone {window.time_zone!r}: use an IANA name such as Europe/Berlin or UTC")
        if window.starts_at is not None or window.ends_at is not None:
            add("starts_at", "a weekly window has no starts_at/ends_at (those are for one_off windows)")
    elif window.kind == FreezeKind.ONE_OFF:
        if window.starts_at is None:
            add("starts_at", "a one_off window needs starts_at (a date and time with its offset)")
        if window.ends_at is None:
            add("ends_at", "a one_off window needs ends_at (a date and time with its offset)")
        if window.starts_at is not None and window.ends_at is not None and window.ends_at <= window.starts_at:
            add("ends_at", "ends_at must be after starts_at")
        if window.weekdays or window.start_time is not None or window.end_time is not None:
            add("weekdays", "a one_off window has no weekdays/start_time/end_time (those are for weekly windows)")
    else:
        add("kind", f"kind must be one of {', '.join(FreezeKind.values)}")
    return errors


_TZ_CACHE: set[str] = set()


def _time_zones() -> set[str]:
    if not _TZ_CACHE:
        _TZ_CACHE.update(zoneinfo.available_timezones())
    return _TZ_CACHE
class Pod(models.Model):
    """One agent process (local) or Kubernetes pod (kubernetes) the platform manages for a
    pool; each runs one agent, named like the pod, with the pool's slots_per_pod slots.
    `phase` is changed only by agents_app.services.pods.pod_transition."""

    pool = models.ForeignKey(AgentPool, on_delete=models.CASCADE, related_name="pods")
    # <pool>-<random suffix>: unique, and two pods created in the same second never clash.
    name = models.CharField(max_length=63, unique=True)
    backend = models.CharField(max_length=20, choices=PoolBackend.choices)
    backend_id = models.CharField(max_length=100, blank=True)  # pid (local), pod uid (kubernetes)
    phase = models.CharField(max_length=20, choices=choices(PodPhase), default=PodPhase.PENDING)
    agent = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="pods")
    created_at = models.DateTimeField(auto_now_add=True)
    registered_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)  # last listed by its backend
    gone_at = models.DateTimeField(null=True, blank=True)
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["pool", "phase"], name="pod_pool_phase")]

    def __str__(self) -> str:
        return f"{self.name} ({self.phase})"


class ScalingDecision(models.Model):
    """One autoscaler decision for a pool: what it saw, what it chose, and why."""

    pool = models.ForeignKey(AgentPool, on_delete=models.CASCADE, related_name="scaling_decisions")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    action = models.CharField(max_length=20)  # up | down | none | replace | error
    pods_before = models.PositiveIntegerField()
    desired = models.PositiveIntegerField()
    demand = models.PositiveIntegerField()
    # {running, queued, reserved, frozen, idle_pods, last_activity_at, ...}: the inputs as seen.
    inputs = models.JSONField(default=dict)
    pods_created = models.JSONField(default=list)
    pods_deleted = models.JSONField(default=list)
    reason = models.TextField()

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.pool}: {self.action} ({self.reason})"
