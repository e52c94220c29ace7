"""Workflows across workspaces: variable sets, notification destinations and their deliveries.
Registered with tasks_app (imported by tasks_app/models.py). Run triggers are a relation of
Workspace itself (Workspace.trigger_sources)."""

from __future__ import annotations

from django.contrib.auth.models import Group
from django.db import models

from iacplatform import crypto
from tasks_app.variable_fields import VariableFields
from tasks_app.workflows.states import (
    DELIVERY_STATUS_CHOICES,
    DeliveryStatus,
    NotificationKind,
    Trigger,
    VariableSetScope,
)


class VariableSet(models.Model):
    """Variables applied to many workspaces: to the chosen ones (`workspaces`), to every
    workspace its team administers (`team`), or to every workspace (`global`). A `priority`
    set wins over the workspace's own variables (workflows/precedence.py says the whole order).
    Owned by a team (its members manage it) or by the site admins alone (no team)."""

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    scope = models.CharField(max_length=20, choices=VariableSetScope.choices, default=VariableSetScope.WORKSPACES)
    priority = models.BooleanField(default=False)
    team = models.ForeignKey(Group, null=True, blank=True, on_delete=models.CASCADE, related_name="variable_sets")
    workspaces = models.ManyToManyField("tasks_app.Workspace", blank=True, related_name="variable_sets")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class VariableSetVariable(VariableFields):
    variable_set = models.ForeignKey(VariableSet, on_delete=models.CASCADE, related_name="variables")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["variable_set", "key", "category"],
                                               name="variable_set_variable_unique_key")]
        ordering = ["category", "key"]


class NotificationDestination(models.Model):
    """Where a workspace's run events go: a signed generic webhook, a Slack-compatible
    incoming webhook, or email. The webhook's signing secret is stored encrypted and never
    shown again."""

    workspace = models.ForeignKey("tasks_app.Workspace", on_delete=models.CASCADE, related_name="notification_destinations")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=NotificationKind.choices)
    url = models.URLField(max_length=2000, blank=True)
    emails = models.JSONField(default=list, blank=True)
    encrypted_secret = models.BinaryField(null=True, blank=True)
    triggers = models.JSONField(default=list)  # Trigger values
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="notification_destination_name")]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind}) on {self.workspace}"

    @property
    def secret(self) -> str:
        return crypto.decrypt(self.encrypted_secret).decode() if self.encrypted_secret else ""

    def set_secret(self, secret: str) -> None:
        self.encrypted_secret = crypto.encrypt(secret.encode()) if secret else None


class NotificationDelivery(models.Model):
    """One notification to one destination, stored in the transaction of what it tells
    (a run's transition), then sent by the worker with retries (workflows/notifications.py)."""

    destination = models.ForeignKey(NotificationDestination, on_delete=models.CASCADE, related_name="deliveries")
    trigger = models.CharField(max_length=30, choices=Trigger.choices)
    task = models.ForeignKey("tasks_app.Task", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    # What happened, as it was when it happened (the run's status and message).
    event = models.JSONField(default=dict)
    status = models.CharField(max_length=20, choices=DELIVERY_STATUS_CHOICES, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="delivery_due")]


class NotificationAttempt(models.Model):
    """One try of a delivery (its event row): the answer's status code or the error."""

    delivery = models.ForeignKey(NotificationDelivery, on_delete=models.CASCADE, related_name="attempt_rows")
    number = models.PositiveSmallIntegerField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    to_status = models.CharField(max_length=20, choices=DELIVERY_STATUS_CHOICES)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
