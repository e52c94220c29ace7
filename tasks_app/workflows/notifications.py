"""Notifications: per-workspace destinations (a signed generic webhook, a Slack-compatible
incoming webhook, email) and the durable delivery of what happens to runs.

A delivery is stored in the transaction of what it tells (`notifications_enqueue`, called by
run_transition), so nothing is lost between a run's change and its notification, and nothing
is sent there: the worker sends (`deliveries_send_due`, ticked by Celery beat every
IAC_NOTIFY_INTERVAL_SECONDS), outside any transaction, so a slow or failing receiver never
delays a run. A failed attempt is retried with exponential back-off (Celery's own
`get_exponential_backoff_interval`) until IAC_NOTIFY_MAX_ATTEMPTS; every attempt is a row
(NotificationAttempt) shown on the workspace page and in the API. A delivery's status changes
in one function (`delivery_attempted`), under the row's lock, through the DELIVERY table.

Everything a user sets is hostile: a destination on a loopback, link-local (cloud metadata)
or private address is refused unless IAC_NOTIFY_ALLOW_PRIVATE_ADDRESSES, checked when it is
saved and again before each send (a name may resolve elsewhere later); redirects are not
followed. A payload's text is masked with the workspace's sensitive values, as logs are.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
from celery.utils.time import get_exponential_backoff_interval
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import EmailValidator
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents_app.redaction import redact
from iacplatform.errors import invalid_field
from iacplatform.permissions import Action, require
from iacplatform.unit_of_work import UnitOfWork
from tasks_app import events
from tasks_app.models import Task, Workspace
from tasks_app.redaction import sensitive_values
from tasks_app.services.audit import audit_record
from tasks_app.states import RunStatus
from tasks_app.workflows.models import NotificationAttempt, NotificationDelivery, NotificationDestination
from tasks_app.workflows.states import DELIVERY, DeliveryStatus, NotificationKind, Trigger

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-IAC-Signature-256"  # "sha256=<hex HMAC-SHA256 of the body>", as the forges sign
EVENT_HEADER = "X-IAC-Event"
DELIVERY_HEADER = "X-IAC-Delivery"
SUBSCRIBABLE = [t for t in Trigger.values if t != Trigger.TEST]
MAX_EMAILS = 20
FIELDS = ("name", "kind", "url", "emails", "secret", "triggers", "enabled")

# Which transition of a run notifies which trigger.
RUN_TRIGGERS: dict[str, Trigger] = {
    RunStatus.PLANNING: Trigger.RUN_STARTED,
    RunStatus.APPLY_PENDING: Trigger.NEEDS_ATTENTION,
    RunStatus.APPLIED: Trigger.APPLIED,
    RunStatus.ERRORED: Trigger.ERRORED,
}


# Destinations ---------------------------------------------------------------------------------


def _address_problem(host: str) -> str:
    """Why the platform may not call `host` (empty: it may)."""
    if settings.IAC_NOTIFY_ALLOW_PRIVATE_ADDRESSES:
        return ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return f"'{host}' does not resolve"
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if (address.is_loopback or address.is_link_local or address.is_private or address.is_reserved
                or address.is_multicast or address.is_unspecified):
            return (f"'{host}' resolves to {address}, a loopback, link-local or private address: refused "
                    "(a site admin may allow such destinations with IAC_NOTIFY_ALLOW_PRIVATE_ADDRESSES)")
    return ""


def destination_url_check(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid_field("url", "must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise invalid_field("url", "must not carry credentials: a webhook's secret signs its body instead")
    problem = _address_problem(parts.hostname)
    if problem:
        raise invalid_field("url", problem)


def _check(fields: dict[str, Any]) -> None:
    kind = fields["kind"]
    if kind not in NotificationKind.values:
        raise invalid_field("kind", f"must be one of {', '.join(NotificationKind.values)}")
    unknown = sorted(set(fields["triggers"]) - set(SUBSCRIBABLE))
    if unknown:
        raise invalid_field("triggers", f"unknown trigger '{unknown[0]}': one of {', '.join(SUBSCRIBABLE)}")
    if kind == NotificationKind.EMAIL:
        emails = fields["emails"]
        if not emails or len(emails) > MAX_EMAILS:
            raise invalid_field("emails", f"an email destination needs 1 to {MAX_EMAILS} addresses")
        for address in emails:
            try:
                EmailValidator()(address)
            except ValidationError as exc:
                raise invalid_field("emails", f"'{address}' is not an email address") from exc
    else:
        destination_url_check(fields["url"])


def notification_destination_create(*, workspace: Workspace, actor: Any, name: str, kind: str, url: str = "",
                                    emails: list[str] | None = None, secret: str = "",
                                    triggers: list[str] | None = None, enabled: bool = True) -> NotificationDestination:
    require(actor, Action.SETTINGS, workspace)
    fields = {"kind": kind, "url": url, "emails": list(emails or []), "triggers": list(triggers or [])}
    _check(fields)
    destination = NotificationDestination(workspace=workspace, name=name, enabled=enabled, **fields)
    destination.set_secret(secret)
    try:
        with transaction.atomic():
            destination.save()
    except IntegrityError as exc:
        raise invalid_field("name", f"a destination '{name}' already exists in this workspace") from exc
    audit_record(actor=actor, action="notification.create", obj=workspace,
                 data={"name": name, "kind": kind, "url": url, "triggers": fields["triggers"]})
    return destination


def notification_destination_update(*, destination: NotificationDestination, actor: Any,
                                    changes: dict[str, Any]) -> NotificationDestination:
    require(actor, Action.SETTINGS, destination.workspace)
    unknown = set(changes) - set(FIELDS)
    if unknown:
        raise invalid_field(sorted(unknown)[0], "not a destination field")
    fields = {k: changes.get(k, getattr(destination, k)) for k in ("kind", "url", "emails", "triggers")}
    _check(fields)
    for name, value in changes.items():
        if name == "secret":
            destination.set_secret(value)
        else:
            setattr(destination, name, value)
    try:
        with transaction.atomic():
            destination.save()
    except IntegrityError as exc:
        raise invalid_field("name", f"a destination '{destination.name}' already exists in this workspace") from exc
    audit_record(actor=actor, action="notification.update", obj=destination.workspace,
                 data={"name": destination.name, "changes": sorted(changes)})
    return destination


def notification_destination_delete(*, destination: NotificationDestination, actor: Any) -> None:
    require(actor, Action.SETTINGS, destination.workspace)
    audit_record(actor=actor, action="notification.delete", obj=destination.workspace, data={"name": destination.name})
    destination.delete()


def notification_destination_test(*, destination: NotificationDestination, actor: Any) -> NotificationDelivery:
    """"Send a test": a delivery like any other (stored, sent by the worker, retried)."""
    require(actor, Action.SETTINGS, destination.workspace)
    delivery = NotificationDelivery.objects.create(
        destination=destination, trigger=Trigger.TEST, next_attempt_at=timezone.now(),
        event={"workspace": destination.workspace.name, "message": f"a test from {getattr(actor, 'username', actor)}"})
    audit_record(actor=actor, action="notification.test", obj=destination.workspace, data={"name": destination.name})
    return delivery


# Enqueueing (in the transaction of what is told) --------------------------------------------


def notifications_enqueue(*, workspace_id: int, trigger: Trigger, event: Any, uow: UnitOfWork,
                          task: Task | None = None) -> int:
    """Store a delivery for each enabled destination of the workspace subscribed to `trigger`
    (one query; rows written at the unit's flush). `event`: the event's JSON, or a function
    making it (called only when someone listens). Returns how many were stored."""
    destinations = list(NotificationDestination.objects.filter(
        workspace_id=workspace_id, enabled=True, triggers__contains=[trigger]).values_list("id", flat=True))
    if not destinations:
        return 0
    data = event() if callable(event) else event
    now = timezone.now()
    for destination_id in destinations:
        uow.insert(NotificationDelivery(destination_id=destination_id, trigger=trigger, task=task, event=data,
                                        next_attempt_at=now))
    return len(destinations)


def run_notify(task: Task, to: RunStatus, *, uow: UnitOfWork) -> None:
    """run_transition's hook: the run (locked) moves to `to`."""
    trigger = RUN_TRIGGERS.get(to)
    if trigger is None:
        return
    if trigger == Trigger.NEEDS_ATTENTION and (task.auto_apply or task.workspace.auto_apply):
        return  # confirmed in the same transaction: nobody needs to look
    notifications_enqueue(workspace_id=task.workspace_id, trigger=trigger, task=task, uow=uow, event=lambda: {
        "run": task.id, "workspace": task.workspace.name, "operation": task.operation, "status": str(to),
        "message": task.message, "triggered_by": task.triggered_by_id,
    })


def run_notify_policy_failed(task: Task, *, uow: UnitOfWork, level: str, failures: list[str]) -> None:
    """policy_transition's hook: a mandatory policy failed the run's plan (`level`: soft, an
    override waits for a workspace admin; hard, the run errors). `failures`: the policies'
    deny messages (masked when sent, as every payload is)."""
    notifications_enqueue(workspace_id=task.workspace_id, trigger=Trigger.POLICY_FAILED, task=task, uow=uow,
                          event=lambda: {
                              "run": task.id, "workspace": task.workspace.name, "operation": task.operation,
                              "status": str(task.status), "message": task.message, "policy_level": level,
                              "policy_failures": failures[:20],
                          })


# Sending (the worker) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status_code: int | None = None
    error: str = ""
    final: bool = False  # no retry helps (a refused address, a destination gone)


def _payload(delivery: NotificationDelivery) -> dict[str, Any]:
    destination = delivery.destination
    event = dict(delivery.event)
    masked = sensitive_values(destination.workspace_id)
    event = {k: redact(v, masked) if isinstance(v, str) else v for k, v in event.items()}
    run_url = f"{settings.IAC_PUBLIC_URL}/runs/{event['run']}/" if event.get("run") else ""
    return {"delivery": delivery.id, "trigger": delivery.trigger, "destination": destination.name,
            "created_at": delivery.created_at.isoformat(), "run_url": run_url, **event}


def _text(payload: dict[str, Any]) -> str:
    what = {Trigger.TEST: "test notification", Trigger.NEEDS_ATTENTION: "needs attention (waiting for Confirm)",
            Trigger.RUN_STARTED: "started", Trigger.APPLIED: "applied", Trigger.ERRORED: "errored",
            Trigger.DRIFT_DETECTED: "drift detected",
            Trigger.POLICY_FAILED: f"failed its {payload.get('policy_level', '')}-mandatory policy check",
            }[Trigger(payload["trigger"])]
    run = f"run {payload['run']} " if payload.get("run") else ""
    lines = [f"[{payload.get('workspace', '')}] {run}{what}"]
    if payload.get("message"):
        lines.append(str(payload["message"]))
    lines += [f"- {failure}" for failure in payload.get("policy_failures") or []]
    if payload.get("run_url"):
        lines.append(payload["run_url"])
    return "\n".join(lines)


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _send(delivery: NotificationDelivery) -> Outcome:
    destination = delivery.destination
    payload = _payload(delivery)
    if destination.kind == NotificationKind.EMAIL:
        try:
            send_mail(subject=_text(payload).splitlines()[0], message=_text(payload),
                      from_email=settings.DEFAULT_FROM_EMAIL, recipient_list=destination.emails)
        except Exception as exc:  # noqa: BLE001  (SMTP and socket errors alike: retried)
            return Outcome(ok=False, error=f"email: {type(exc).__name__}: {exc}")
        return Outcome(ok=True)
    host = urlsplit(destination.url).hostname or ""
    problem = _address_problem(host)
    if problem:
        return Outcome(ok=False, error=problem, final=True)
    if destination.kind == NotificationKind.SLACK:
        body = json.dumps({"text": _text(payload)}).encode()
        headers = {"Content-Type": "application/json"}
    else:
        body = json.dumps(payload, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", EVENT_HEADER: delivery.trigger,
                   DELIVERY_HEADER: str(delivery.id)}
        if destination.secret:
            headers[SIGNATURE_HEADER] = signature(destination.secret, body)
    try:
        response = requests.post(destination.url, data=body, headers=headers, allow_redirects=False,
                                 timeout=settings.IAC_NOTIFY_TIMEOUT_SECONDS)
    except requests.RequestException as exc:
        return Outcome(ok=False, error=f"{type(exc).__name__}: {exc}"[:1000])
    if 200 <= response.status_code < 300:
        return Outcome(ok=True, status_code=response.status_code)
    return Outcome(ok=False, status_code=response.status_code, error=f"answered {response.status_code}")


def _backoff(attempts: int) -> timedelta:
    seconds = get_exponential_backoff_interval(
        factor=settings.IAC_NOTIFY_BACKOFF_SECONDS, retries=attempts - 1,
        maximum=settings.IAC_NOTIFY_BACKOFF_MAX_SECONDS, full_jitter=False)
    return timedelta(seconds=max(seconds, settings.IAC_NOTIFY_BACKOFF_SECONDS))


# While a worker sends, the delivery is not due for others: the longest a send may take.
def _lease() -> timedelta:
    return timedelta(seconds=settings.IAC_NOTIFY_TIMEOUT_SECONDS * 3 + 30)


def deliveries_claim_due(*, limit: int = 20) -> list[int]:
    """The due deliveries, each pushed past a lease so that another worker skips it."""
    now = timezone.now()
    with transaction.atomic():
        due = list(
            NotificationDelivery.objects.select_for_update(skip_locked=True)
            .filter(status__in=[DeliveryStatus.PENDING, DeliveryStatus.RETRYING], next_attempt_at__lte=now)
            .order_by("next_attempt_at", "id").values_list("id", flat=True)[:limit])
        NotificationDelivery.objects.filter(id__in=due).update(next_attempt_at=now + _lease())
    return due


def delivery_attempted(*, delivery_id: int, outcome: Outcome) -> NotificationDelivery:
    """The one writer of a delivery's status: an attempt's outcome, under the row's lock."""
    with transaction.atomic():
        delivery = NotificationDelivery.objects.select_for_update(of=("self",)).select_related("destination").get(id=delivery_id)
        delivery.attempts += 1
        if outcome.ok:
            to = DeliveryStatus.DELIVERED
        elif outcome.final or delivery.attempts >= settings.IAC_NOTIFY_MAX_ATTEMPTS:
            to = DeliveryStatus.FAILED
        else:
            to = DeliveryStatus.RETRYING
        DELIVERY.check(delivery.status, to)
        delivery.status = to
        now = timezone.now()
        delivery.next_attempt_at = now + _backoff(delivery.attempts) if to == DeliveryStatus.RETRYING else None
        if to != DeliveryStatus.RETRYING:
            delivery.finished_at = now
        delivery.save(update_fields=["attempts", "status", "next_attempt_at", "finished_at"])
        NotificationAttempt.objects.create(delivery=delivery, number=delivery.attempts, status_code=outcome.status_code,
                                           error=outcome.error, to_status=to)
        events.workspace_changed(workspace_id=delivery.destination.workspace_id)
    return delivery


def deliveries_send_due() -> dict[str, int]:
    """The worker's tick: send what is due, one by one, outside any transaction."""
    sent = failed = 0
    for delivery_id in deliveries_claim_due():
        delivery = NotificationDelivery.objects.select_related("destination").filter(id=delivery_id).first()
        if delivery is None:
            continue
        try:
            outcome = _send(delivery)
        except Exception as exc:  # a bug must not stop the others: recorded, retried
            log.exception("notification delivery %s failed", delivery_id)
            outcome = Outcome(ok=False, error=f"{type(exc).__name__}: {exc}")
        delivery_attempted(delivery_id=delivery_id, outcome=outcome)
        sent, failed = (sent + 1, failed) if outcome.ok else (sent, failed + 1)
    return {"sent": sent, "failed": failed}

