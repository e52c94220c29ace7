"""The drift scheduler: a workspace's cron schedule in its time zone queues a refresh-only
drift check at its moment, never while the workspace has a run in progress nor while its pool
is frozen; bad schedules are refused with the field named."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from agents_app.models import FreezeWindow
from iacplatform import crypto
from iacplatform.views_metrics import scrape
from tasks_app.models import StateVersion, Task, Workspace
from tasks_app.services.runs import run_cancel
from tasks_app.workflows.drift import drift_checks_start
from tests.factories import DEMO_MAIN_TF, make_workspace

pytestmark = pytest.mark.django_db


def test_it_checks_at_the_scheduled_moment_only_when_idle_and_not_frozen(api, workspace):
    url = f"/api/v1/workspaces/{workspace.id}/"
    bad = api.patch(url, {"drift_schedule": "every morning"}, format="json")
    assert bad.status_code == 400 and "drift_schedule" in bad.json()["errors"]
    bad = api.patch(url, {"drift_schedule": "0 6 * * *", "drift_timezone": "Mars/Olympus"}, format="json")
    assert bad.status_code == 400 and "drift_timezone" in bad.json()["errors"]
    ok = api.patch(url, {"drift_schedule": "0 6 * * *", "drift_timezone": "Europe/Berlin"}, format="json")
    assert ok.status_code == 200 and ok.json()["health"] == "unknown"
    StateVersion.objects.create(workspace=workspace, serial=1, lineage="l", sha256="0" * 64, size=2,
                                encrypted_data=crypto.encrypt(b"{}"))

    now = datetime(2026, 12, 7, 12, 0, tzinfo=ZoneInfo("UTC"))
    assert drift_checks_start(now=now) == []  # a new schedule: its first moment is computed
    workspace.refresh_from_db()
    assert workspace.drift_next_at == datetime(2026, 12, 8, 5, 0, tzinfo=ZoneInfo("UTC"))  # 06:00 in Berlin

    due = workspace.drift_next_at + timedelta(seconds=1)
    [run_id] = drift_checks_start(now=due)
    run = Task.objects.get(id=run_id)
    assert (run.drift_check, run.operation, run.plan_mode) == (True, "plan", "refresh_only")
    assert "scheduled drift check" in run.message
    workspace.refresh_from_db()
    assert workspace.drift_next_at == datetime(2026, 12, 9, 5, 0, tzinfo=ZoneInfo("UTC"))

    # Busy (the check is still queued): the next moment passes without a second one.
    later = workspace.drift_next_at + timedelta(seconds=1)
    assert drift_checks_start(now=later) == []
    run_cancel(task_id=run_id, actor="test")
    # Frozen: nothing either, and it is tried again once the window ends.
    FreezeWindow.objects.create(pool=workspace.pool, name="change freeze", kind="one_off",
                                starts_at=timezone.now() - timedelta(minutes=1),
                                ends_at=timezone.now() + timedelta(hours=1))
    assert drift_checks_start(now=later) == []
    FreezeWindow.objects.all().delete()
    assert len(drift_checks_start(now=later)) == 1
    # The cancelled check found nothing: the workspace is still unknown, for the metrics too.
    assert b'iac_workspaces_health{health="unknown"} 1.0' in scrape()


def test_it_never_checks_a_workspace_whose_schedule_is_off(workspace, settings):
    settings.IAC_DRIFT_SCHEDULE = "* * * * *"
    Workspace.objects.filter(id=workspace.id).update(drift_schedule="off")
    StateVersion.objects.create(workspace=workspace, serial=1, lineage="l", sha256="0" * 64, size=2,
                                encrypted_data=crypto.encrypt(b"{}"))
    now = timezone.now()
    assert drift_checks_start(now=now) == [] and drift_checks_start(now=now + timedelta(minutes=5)) == []
    assert not Task.objects.exists()


def test_a_pools_default_schedule_in_its_time_zone_checks_its_workspaces_without_one_of_their_own(
        api, workspace, pool, settings):
    settings.IAC_DRIFT_SCHEDULE = "0 3 * * *"  # the site's default: the pool's overrides it
    own = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    Workspace.objects.filter(id=own.id).update(drift_schedule="30 12 * * *")  # in UTC, its own
    for ws in (workspace, own):
        StateVersion.objects.create(workspace=ws, serial=1, lineage="l", sha256="0" * 64, size=2,
                                    encrypted_data=crypto.encrypt(b"{}"))
    url = f"/api/v1/pools/{pool.id}/"
    bad = api.patch(url, {"drift_schedule": "hourly"}, format="json")
    assert bad.status_code == 400 and "5-field cron expression" in str(bad.json()["errors"]["drift_schedule"])
    bad = api.patch(url, {"drift_timezone": "Mars/Olympus"}, format="json")
    assert bad.status_code == 400 and "IANA time zone" in str(bad.json()["errors"]["drift_timezone"])
    ok = api.patch(url, {"drift_schedule": "0 6 * * *", "drift_timezone": "America/New_York"}, format="json")
    assert ok.status_code == 200 and ok.json()["drift_schedule"] == "0 6 * * *"

    now = datetime(2026, 12, 7, 12, 0, tzinfo=ZoneInfo("UTC"))
    assert drift_checks_start(now=now) == []
    workspace.refresh_from_db()
    own.refresh_from_db()
    assert workspace.drift_next_at == datetime(2026, 12, 8, 11, 0, tzinfo=ZoneInfo("UTC"))  # 06:00 in New York
    assert own.drift_next_at == datetime(2026, 12, 7, 12, 30, tzinfo=ZoneInfo("UTC"))
    runs = {Task.objects.get(id=i).workspace_id: i for i in drift_checks_start(
        now=workspace.drift_next_at + timedelta(seconds=1))}
    assert set(runs) == {workspace.id, own.id}  # own's moment came first
    run_id = runs[workspace.id]
    assert "(0 6 * * *, America/New_York)" in Task.objects.get(id=run_id).message
    assert "(30 12 * * *, UTC)" in Task.objects.get(id=runs[own.id]).message
    for done in runs.values():
        run_cancel(task_id=done, actor="test")

    # The pool's default changes: a new schedule for its workspaces that follow it, from now
    # (not at the old one's next moment); the workspace with its own keeps it.
    api.patch(url, {"drift_schedule": "15 * * * *", "drift_timezone": "UTC"}, format="json")
    later = datetime(2026, 12, 8, 12, 0, tzinfo=ZoneInfo("UTC"))
    drift_checks_start(now=later)
    workspace.refresh_from_db()
    assert workspace.drift_next_at == datetime(2026, 12, 8, 12, 15, tzinfo=ZoneInfo("UTC"))
    # "off" on the pool: its followers are checked no more, not even by the site's default.
    api.patch(url, {"drift_schedule": "off"}, format="json")
    queued = drift_checks_start(now=later + timedelta(days=1))
    assert [Task.objects.get(id=i).workspace_id for i in queued] == [own.id]
    assert Task.objects.filter(workspace=workspace).count() == 1
