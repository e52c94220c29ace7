"""Notification destinations: hostile addresses refused unless the site allows them, email
through Django's email backend, a payload's secrets masked, back-off between attempts."""

from __future__ import annotations

import pytest
from django.core import mail
from rest_framework.test import APIClient

from iacplatform.unit_of_work import unit_of_work
from tasks_app.models import Variable
from tasks_app.workflows.models import NotificationDelivery, NotificationDestination
from tasks_app.workflows.notifications import deliveries_send_due, notifications_enqueue
from tasks_app.workflows.states import Trigger

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/x",
    "http://[::1]/x", "http://localhost/x", "http://192.168.0.10/", "ftp://example.com/x", "http://u:p@example.com/",
])
def test_it_refuses_a_destination_the_platform_may_not_call(api: APIClient, workspace, settings, url):
    settings.IAC_NOTIFY_ALLOW_PRIVATE_ADDRESSES = False
    answer = api.post(f"/api/v1/workspaces/{workspace.id}/notification-destinations/",
                      {"name": "x", "kind": "webhook", "url": url}, format="json")
    assert answer.status_code == 400 and "url" in answer.json()["errors"], answer.content
    assert not NotificationDestination.objects.exists()


def test_it_accepts_a_loopback_receiver_when_the_site_allows_it(api: APIClient, workspace, settings):
    settings.IAC_NOTIFY_ALLOW_PRIVATE_ADDRESSES = True
    answer = api.post(f"/api/v1/workspaces/{workspace.id}/notification-destinations/",
                      {"name": "x", "kind": "webhook", "url": "http://127.0.0.1:9/x", "triggers": ["nope"]},
                      format="json")
    assert answer.status_code == 400 and "triggers" in answer.json()["errors"]
    answer = api.post(f"/api/v1/workspaces/{workspace.id}/notification-destinations/",
                      {"name": "x", "kind": "webhook", "url": "http://127.0.0.1:9/x", "triggers": ["applied"]},
                      format="json")
    assert answer.status_code == 201


def test_it_emails_with_the_secrets_masked(api: APIClient, workspace, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    secret = "hunter2-very-secret"
    var = Variable(workspace=workspace, key="db_password", sensitive=True)
    var.set_value(secret)
    var.save()
    bad = api.post(f"/api/v1/workspaces/{workspace.id}/notification-destinations/",
                   {"name": "mail", "kind": "email", "emails": ["not-an-address"]}, format="json")
    assert bad.status_code == 400 and "emails" in bad.json()["errors"]
    made = api.post(f"/api/v1/workspaces/{workspace.id}/notification-destinations/",
                    {"name": "mail", "kind": "email", "emails": ["ops@example.com"], "triggers": ["errored"]},
                    format="json")
    assert made.status_code == 201, made.content
    with unit_of_work() as uow:
        notifications_enqueue(workspace_id=workspace.id, trigger=Trigger.ERRORED, uow=uow,
                              event={"run": 7, "workspace": workspace.name, "message": f"could not use {secret}"})
    assert deliveries_send_due() == {"sent": 1, "failed": 0}
    [message] = mail.outbox
    assert message.to == ["ops@example.com"] and "run 7 errored" in message.subject
    assert secret not in message.body and "could not use ***" in message.body
    assert NotificationDelivery.objects.get().status == "delivered"


def test_it_waits_longer_after_each_failed_attempt(workspace, settings):
    settings.IAC_NOTIFY_ALLOW_PRIVATE_ADDRESSES = True
    settings.IAC_NOTIFY_BACKOFF_SECONDS = 10
    destination = NotificationDestination.objects.create(workspace=workspace, name="down", kind="webhook",
                                                         url="http://127.0.0.1:9/nothing-listens",
                                                         triggers=["applied"])
    with unit_of_work() as uow:
        notifications_enqueue(workspace_id=workspace.id, trigger=Trigger.APPLIED, uow=uow, event={"run": 1})
    delivery = NotificationDelivery.objects.get(destination=destination)
    gaps = []
    for _ in range(3):
        NotificationDelivery.objects.filter(id=delivery.id).update(next_attempt_at=delivery.created_at)
        assert deliveries_send_due() == {"sent": 0, "failed": 1}
        delivery.refresh_from_db()
        attempt = delivery.attempt_rows.first()
        gaps.append((delivery.next_attempt_at - attempt.created_at).total_seconds())
    assert delivery.status == "retrying" and delivery.attempts == 3
    assert 9 < gaps[0] < 11 and 19 < gaps[1] < 21 and 39 < gaps[2] < 41
    assert "ConnectionError" in delivery.attempt_rows.first().error


def test_it_posts_a_slack_compatible_text(workspace, settings):
    from tests.e2e.test_notifications import Receiver

    settings.IAC_NOTIFY_ALLOW_PRIVATE_ADDRESSES = True
    receiver = Receiver()
    try:
        NotificationDestination.objects.create(workspace=workspace, name="chat", kind="slack", url=receiver.url,
                                               triggers=["applied"])
        with unit_of_work() as uow:
            notifications_enqueue(workspace_id=workspace.id, trigger=Trigger.APPLIED, uow=uow,
                                  event={"run": 3, "workspace": workspace.name, "message": ""})
        assert deliveries_send_due() == {"sent": 1, "failed": 0}
        [sent] = receiver.received
        assert set(sent["body"]) == {"text"} and sent["body"]["text"].startswith(f"[{workspace.name}] run 3 applied")
        assert "/runs/3/" in sent["body"]["text"]
    finally:
        receiver.close()
