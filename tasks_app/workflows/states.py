"""The workflows' enums and the notification delivery's transition table. Pure: tested
without a database."""

from __future__ import annotations

import enum

from django.db import models

from iacplatform.transitions import Machine


class VariableSetScope(models.TextChoices):
    # The order is specificity, most specific first: among sets, the more specific scope wins.
    WORKSPACES = "workspaces"  # the workspaces it is attached to
    TEAM = "team"  # every workspace its team administers
    GLOBAL = "global"  # every workspace


class NotificationKind(models.TextChoices):
    WEBHOOK = "webhook"  # a JSON body signed with HMAC-SHA256
    SLACK = "slack"  # a Slack-compatible incoming webhook ({"text": ...})
    EMAIL = "email"


class Trigger(models.TextChoices):
    RUN_STARTED = "run_started"
    NEEDS_ATTENTION = "needs_attention"  # waiting for Confirm
    APPLIED = "applied"
    ERRORED = "errored"
    DRIFT_DETECTED = "drift_detected"
    POLICY_FAILED = "policy_failed"  # a mandatory policy failed: soft (an override waits) or hard (errored)
    TEST = "test"  # "send a test": never subscribed to, always sent


class Health(models.TextChoices):
    """A workspace's health, as its last drift check found it."""

    UNKNOWN = "unknown"  # never checked
    HEALTHY = "healthy"
    DRIFTED = "drifted"  # the real infrastructure differs from the state (health_detail says where)
    CHECK_FAILED = "check_failed"  # the check itself failed (health_detail says why)


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # stored, not tried yet
    RETRYING = "retrying"  # tried, failed, tried again at next_attempt_at
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up after the last attempt, or the destination refuses for good

# Django/OpenAPI choices of a delivery's status (one enum in the schema, settings' ENUM_NAME_OVERRIDES).
DELIVERY_STATUS_CHOICES = [(m.value, m.value) for m in DeliveryStatus]

D = DeliveryStatus
DELIVERY = Machine("notification delivery", DeliveryStatus, {
    D.PENDING: frozenset({D.DELIVERED, D.RETRYING, D.FAILED}),
    D.RETRYING: frozenset({D.DELIVERED, D.RETRYING, D.FAILED}),
})
