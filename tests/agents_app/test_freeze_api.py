"""Freeze windows in the REST API, the admin and the pool page: site admins manage them, bad
input is a 400 that says what is wrong and changes nothing, every change is audited, and
the pool says whether it is frozen now."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from agents_app.models import FreezeWindow
from agents_app.services.freeze import moment_text
from tasks_app.models import AuditEvent
from tasks_app.services import sweep
from tasks_app.services.runs import run_create
from tests.agents_app.test_bounds import claim, plan
from tests.factories import make_agent

pytestmark = pytest.mark.django_db

WEEKLY = {"name": "nightly", "kind": "weekly", "weekdays": ["mon", "fri"], "start_time": "22:00",
          "end_time": "06:00", "time_zone": "Europe/Berlin", "reason": "backups"}


def url(pool, window=None, suffix="") -> str:
    base = f"/api/v1/pools/{pool.id}/freeze-windows/"
    return base + (f"{window}/" if window is not None else "") + suffix


def active_one_off(api, pool, minutes=30) -> dict:
    now = timezone.now()
    resp = api.post(url(pool), {"name": "release", "kind": "one_off",
                                "starts_at": (now - timedelta(minutes=1)).isoformat(),
                                "ends_at": (now + timedelta(minutes=minutes)).isoformat()}, format="json")
    assert resp.status_code == 201, resp.content
    return resp.json()


def test_a_site_admin_creates_changes_and_deletes_windows_and_each_change_is_audited(api, pool):
    resp = api.post(url(pool), WEEKLY, format="json")
    assert resp.status_code == 201, resp.content
    window = resp.json()
    assert {k: window[k] for k in WEEKLY} == {**WEEKLY, "start_time": "22:00:00", "end_time": "06:00:00"}
    assert window["pool"] == pool.id and window["enabled"] is True and window["lifted_at"] is None

    assert api.get(url(pool)).json()[0]["id"] == window["id"]
    resp = api.patch(url(pool, window["id"]), {"weekdays": ["sat"], "enabled": False}, format="json")
    assert resp.status_code == 200, resp.content
    assert (resp.json()["weekdays"], resp.json()["enabled"]) == (["sat"], False)
    assert api.delete(url(pool, window["id"])).status_code == 204
    assert not FreezeWindow.objects.exists()

    events = list(AuditEvent.objects.filter(object_type="freezewindow").order_by("id"))
    assert [e.action for e in events] == ["freeze_window.create", "freeze_window.update", "freeze_window.delete"]
    assert events[0].actor.username == "alice" and events[0].data["time_zone"] == "Europe/Berlin"
    assert events[1].data["weekdays"] == ["sat"]


@pytest.mark.parametrize("body,field,message", [
    ({"weekdays": []}, "weekdays", "a weekly window needs at least one weekday (mon, tue, wed, thu, fri, sat, sun)"),
    ({"weekdays": "sat"}, "weekdays", 'weekdays must be a list such as ["sat", "sun"] (of mon, tue, wed, thu, fri, '
                                      'sat, sun)'),
    ({"weekdays": ["sat", "sat"]}, "weekdays", "a weekday is listed twice"),
    ({"end_time": "25:00"}, "end_time", "Time has wrong format. Use one of these formats instead: hh:mm[:ss[.uuuuuu]]."),
    ({"weekdays": ["monday"]}, "weekdays", "unknown weekday 'monday': use mon, tue, wed, thu, fri, sat, sun"),
    ({"time_zone": "Europe/Atlantis"}, "time_zone",
     "unknown time zone 'Europe/Atlantis': use an IANA name such as Europe/Berlin or UTC"),
    ({"start_time": None}, "start_time", "a weekly window needs a start time (HH:MM)"),
    ({"kind": "one_off", "weekdays": [], "start_time": None, "end_time": None,
      "starts_at": "2026-12-24T18:00:00Z", "ends_at": "2026-12-24T08:00:00Z"}, "ends_at",
     "ends_at must be after starts_at"),
    ({"kind": "monthly"}, "kind", '"monthly" is not a valid choice.'),
])
def test_bad_windows_are_a_400_that_names_the_field_and_nothing_is_created(api, pool, body, field, message):
    resp = api.post(url(pool), {**WEEKLY, **body}, format="json")
    assert resp.status_code == 400, resp.content
    assert resp.json()["errors"][field] == [message]
    assert not FreezeWindow.objects.exists()
    assert not AuditEvent.objects.filter(object_type="freezewindow").exists()


def test_a_bad_change_is_a_400_and_leaves_the_window_as_it_was(api, pool):
    window = api.post(url(pool), WEEKLY, format="json").json()
    resp = api.patch(url(pool, window["id"]), {"time_zone": "Nowhere"}, format="json")
    assert resp.status_code == 400 and "unknown time zone 'Nowhere'" in resp.json()["detail"]
    assert FreezeWindow.objects.get(id=window["id"]).time_zone == "Europe/Berlin"


def test_lifting_a_window_needs_a_reason_ends_the_freeze_and_is_audited(api, alice, pool):
    window = active_one_off(api, pool)
    pool_url = f"/api/v1/pools/{pool.id}/"
    assert api.get(pool_url).json()["frozen_until"] == window["ends_at"]
    assert api.get(url(pool)).json()[0]["active_until"] == window["ends_at"]

    resp = api.post(url(pool, window["id"], "lift/"), {}, format="json")
    assert resp.status_code == 400 and resp.json()["errors"] == {"reason": ["This field is required."]}
    resp = api.post(url(pool, window["id"], "lift/"), {"reason": "  "}, format="json")
    assert resp.status_code == 400
    assert FreezeWindow.objects.get(id=window["id"]).lifted_at is None

    resp = api.post(url(pool, window["id"], "lift/"), {"reason": "hotfix for incident 42"}, format="json")
    assert resp.status_code == 200, resp.content
    lifted = resp.json()
    assert (lifted["lifted_by"], lifted["lift_reason"], lifted["lifted_until"]) == (
        "alice", "hotfix for incident 42", window["ends_at"])
    assert lifted["active_until"] is None
    assert api.get(pool_url).json()["frozen_until"] is None
    event = AuditEvent.objects.get(action="freeze_window.lift")
    assert event.data["reason"] == "hotfix for incident 42" and event.actor == alice

    again = api.post(url(pool, window["id"], "lift/"), {"reason": "twice"}, format="json")
    assert again.status_code == 409 and again.json()["detail"] == (
        "freeze window 'release' is not active now: there is nothing to lift")


def test_confirm_through_the_api_is_a_409_that_names_the_windows_end(api, setup):
    pool, _, ws = setup
    agent = make_agent(pool=pool, name="a1")[0]
    task = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    sweep.sweep()
    assert plan(agent, claim(agent))
    window = active_one_off(api, pool)
    resp = api.post(f"/api/v1/runs/{task.id}/confirm/", {}, format="json")
    assert resp.status_code == 409
    end = moment_text(FreezeWindow.objects.get(id=window["id"]).ends_at)
    assert f"is frozen until {end} (release): Confirm Apply is refused" in resp.json()["detail"]


def test_the_pool_page_and_the_admin_show_the_windows_and_whether_the_pool_is_frozen(api, alice, pool):
    client = Client()
    client.force_login(alice)
    page = client.get(f"/pools/{pool.id}/").content.decode()
    assert "not frozen" in page and "No freeze windows." in page
    window = active_one_off(api, pool)
    page = client.get(f"/pools/{pool.id}/").content.decode()
    end = timezone.localtime(FreezeWindow.objects.get(id=window["id"]).ends_at).strftime("%Y-%m-%d %H:%M:%S")
    assert f"frozen until {end} UTC (release)" in page and "active until" in page

    admin_page = client.get(f"/admin/agents_app/agentpool/{pool.id}/change/").content.decode()
    assert "frozen until" in admin_page and "release" in admin_page
    resp = client.get(f"/admin/agents_app/freezewindow/{window['id']}/change/")
    assert resp.status_code == 200


def test_a_window_created_in_the_admin_is_checked_and_audited(alice, pool):
    client = Client()
    client.force_login(alice)
    form = {"pool": pool.id, "name": "weekend", "reason": "", "kind": "weekly", "enabled": "on",
            "weekdays": '["sat", "sun"]', "start_time": "00:00", "end_time": "00:00", "time_zone": "Mars/Base",
            "starts_at_0": "", "starts_at_1": "", "ends_at_0": "", "ends_at_1": "", "lift_now": ""}
    resp = client.post("/admin/agents_app/freezewindow/add/", form)
    assert resp.status_code == 200 and "unknown time zone" in resp.content.decode()
    assert not FreezeWindow.objects.exists()
    resp = client.post("/admin/agents_app/freezewindow/add/", {**form, "time_zone": "Europe/Berlin"})
    assert resp.status_code == 302, resp.content.decode()[:2000]
    assert FreezeWindow.objects.get().weekdays == ["sat", "sun"]
    assert AuditEvent.objects.filter(action="freeze_window.create", actor=alice).exists()
