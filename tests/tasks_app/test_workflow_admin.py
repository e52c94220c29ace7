"""The admin's doors to variable sets, their variables and notification destinations: the
same services as the API (its rules in its words, its audit records), a sensitive value and a
signing secret write-only, and nothing kept of a refused form."""

from __future__ import annotations

import pytest
from django.test import Client

from tasks_app.models import AuditEvent
from tasks_app.workflows.models import NotificationDestination, VariableSet, VariableSetVariable
from tests.factories import make_workspace

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def _set_form(**fields) -> dict:
    # (The variables inline's management form: no variable yet, none added here.)
    return {"name": "shared", "description": "", "scope": "workspaces", "team": "", "workspaces": [],
            "variables-TOTAL_FORMS": "0", "variables-INITIAL_FORMS": "0", **fields}


def test_a_site_admin_makes_a_set_attaches_it_and_keeps_its_secret_write_only(admin_client, alice, pool):
    a, b = make_workspace(pool=pool), make_workspace(pool=pool)
    made = admin_client.post("/admin/tasks_app/variableset/add/", _set_form(workspaces=[a.id, b.id]))
    assert made.status_code == 302, made.content.decode()[:2000]
    variable_set = VariableSet.objects.get(name="shared")
    assert set(variable_set.workspaces.all()) == {a, b}

    taken = admin_client.post("/admin/tasks_app/variableset/add/", _set_form())
    assert taken.status_code == 200 and "a variable set &#x27;shared&#x27; already exists" in taken.content.decode()
    team_without_team = admin_client.post("/admin/tasks_app/variableset/add/", _set_form(name="t", scope="team"))
    assert "a team variable set applies to the workspaces its team administers" in team_without_team.content.decode()
    assert VariableSet.objects.count() == 1

    changed = admin_client.post(f"/admin/tasks_app/variableset/{variable_set.id}/change/",
                                _set_form(name="shared-prod", workspaces=[b.id], priority="on"))
    assert changed.status_code == 302, changed.content.decode()[:2000]
    variable_set.refresh_from_db()
    assert (variable_set.name, variable_set.priority, list(variable_set.workspaces.all())) == ("shared-prod", True, [b])

    form = {"variable_set": variable_set.id, "key": "api_token", "category": "terraform", "value": "s3cr3t",
            "sensitive": "on"}
    assert admin_client.post("/admin/tasks_app/variablesetvariable/add/", form).status_code == 302
    variable = VariableSetVariable.objects.get(key="api_token")
    assert variable.sensitive and variable.value == "s3cr3t"
    page = admin_client.get(f"/admin/tasks_app/variablesetvariable/{variable.id}/change/").content.decode()
    assert "s3cr3t" not in page
    bad = admin_client.post("/admin/tasks_app/variablesetvariable/add/",
                            {**form, "key": "LD_PRELOAD", "category": "env"})
    assert "names starting with LD_ change how programs load and are refused" in bad.content.decode()
    # A blank value keeps a sensitive one; making it plain is refused, as in the API.
    kept = admin_client.post(f"/admin/tasks_app/variablesetvariable/{variable.id}/change/",
                             {"key": "api_token", "category": "terraform", "value": "", "sensitive": "on"})
    assert kept.status_code == 302
    variable.refresh_from_db()
    assert variable.value == "s3cr3t"
    plain = admin_client.post(f"/admin/tasks_app/variablesetvariable/{variable.id}/change/",
                              {"key": "api_token", "category": "terraform", "value": "x"})
    assert "cannot be made non-sensitive" in plain.content.decode()

    assert admin_client.post(f"/admin/tasks_app/variableset/{variable_set.id}/delete/",
                             {"post": "yes"}).status_code == 302
    assert not VariableSet.objects.exists() and not VariableSetVariable.objects.exists()
    actions = list(AuditEvent.objects.filter(actor=alice.id).order_by("id").values_list("action", flat=True))
    assert actions == ["variable_set.create", "variable_set.attach", "variable_set.attach", "variable_set.update",
                       "variable_set.detach", "variable_set.variable_create", "variable_set.variable_update",
                       "variable_set.delete"]


def test_it_checks_a_notification_destination_as_the_api_does_and_never_shows_its_secret(admin_client, pool):
    ws = make_workspace(pool=pool)
    form = {"workspace": ws.id, "name": "ops", "kind": "webhook", "url": "https://hooks.example.com/iac",
            "emails": "[]", "triggers": '["applied", "errored"]', "enabled": "on", "secret": "sign-me"}
    unknown = admin_client.post("/admin/tasks_app/notificationdestination/add/", {**form, "triggers": '["nope"]'})
    assert unknown.status_code == 200 and "unknown trigger &#x27;nope&#x27;" in unknown.content.decode()
    no_address = admin_client.post("/admin/tasks_app/notificationdestination/add/", {**form, "kind": "email"})
    assert "an email destination needs 1 to" in no_address.content.decode()
    assert not NotificationDestination.objects.exists()
    assert admin_client.post("/admin/tasks_app/notificationdestination/add/", form).status_code == 302
    destination = NotificationDestination.objects.get(name="ops")
    assert destination.secret == "sign-me" and destination.triggers == ["applied", "errored"]
    page = admin_client.get(f"/admin/tasks_app/notificationdestination/{destination.id}/change/").content.decode()
    assert "sign-me" not in page
    kept = admin_client.post(f"/admin/tasks_app/notificationdestination/{destination.id}/change/",
                             {**form, "secret": "", "triggers": '["applied"]'})
    assert kept.status_code == 302
    destination.refresh_from_db()
    assert destination.secret == "sign-me" and destination.triggers == ["applied"]
    assert [a for a in AuditEvent.objects.order_by("id").values_list("action", flat=True)] == [
        "notification.create", "notification.update"]
