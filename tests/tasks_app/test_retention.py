"""Retention: plan files and logs of long-finished runs go; the run says so; state and audit stay."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from iacplatform import crypto
from tasks_app.dispatch.models import Job
from tasks_app.models import AuditEvent, LogChunk, Plan, StateVersion, Task
from tasks_app.services import retention, sweep
from tasks_app.states import Operation, RunStatus

pytestmark = pytest.mark.django_db


def _run(workspace, *, status: str, ended_days_ago: float | None, log: str = "terraform output\n") -> Task:
    """A run with a plan file and a log, which ended that many days ago (None: not ended)."""
    task = Task.objects.create(
        workspace=workspace, configuration_version=workspace.configuration_versions.first(),
        operation=Operation.PLAN_AND_APPLY, status=status, log_size=len(log.encode()),
        finished_at=None if ended_days_ago is None else timezone.now() - timedelta(days=ended_days_ago),
    )
    Plan.objects.create(task=task, encrypted_data=crypto.encrypt(b"plan.out"), sha256="a" * 64, size=8,
                        summary={"add": 1})
    job = Job.objects.create(task=task, pool=workspace.pool, kind="plan", status="succeeded")
    LogChunk.objects.create(task=task, job=job, seq=0, offset=0, text=log)
    return task


def test_it_prunes_plan_files_after_their_retention_and_keeps_the_summary(settings, workspace):
    settings.IAC_RETENTION_PLAN_DAYS = 90
    settings.IAC_RETENTION_LOG_DAYS = 365
    old = _run(workspace, status=RunStatus.APPLIED, ended_days_ago=100)
    recent = _run(workspace, status=RunStatus.APPLIED, ended_days_ago=10)

    pruned = retention.retention_prune()

    assert (pruned.plans, pruned.logs) == ([old.id], [])
    plan = Plan.objects.get(task=old)
    assert (bytes(plan.encrypted_data), plan.summary, plan.sha256) == (b"", {"add": 1}, "a" * 64)
    assert Plan.objects.get(task=recent).data == b"plan.out"
    assert LogChunk.objects.filter(task=old).exists()  # the log has its own, longer retention
    assert retention.plan_pruned_note(Task.objects.get(id=old.id)).startswith("Plan file pruned after 100 days")


def test_it_prunes_logs_after_their_retention_and_says_so_in_the_api_and_the_page(settings, workspace, api, alice,
                                                                                 client):
    settings.IAC_RETENTION_LOG_DAYS = 30
    old = _run(workspace, status=RunStatus.ERRORED, ended_days_ago=31)

    assert retention.retention_prune().logs == [old.id]

    assert not LogChunk.objects.filter(task=old).exists()
    answer = api.get(f"/api/v1/runs/{old.id}/logs/").json()
    assert answer["complete"] is True
    assert answer["text"].startswith("Log pruned after 31 days (retention)")
    client.force_login(alice)
    page = client.get(reverse("run-detail", args=[old.id]))
    assert b"Log pruned after 31 days" in page.content


def test_it_never_touches_unfinished_runs_state_versions_or_audit_events(settings, workspace):
    settings.IAC_RETENTION_PLAN_DAYS = 1
    settings.IAC_RETENTION_LOG_DAYS = 1
    waiting = _run(workspace, status=RunStatus.APPLY_PENDING, ended_days_ago=None)
    # A run that is not final keeps its plan whatever its timestamps say.
    Task.objects.filter(id=waiting.id).update(finished_at=timezone.now() - timedelta(days=500))
    state = StateVersion.objects.create(workspace=workspace, serial=1, lineage="l", sha256="b" * 64, size=2,
                                        encrypted_data=crypto.encrypt(b"{}"))
    AuditEvent.objects.create(action="run.confirm", object_type="task", object_id=str(waiting.id))

    assert retention.retention_prune(now=timezone.now() + timedelta(days=1000)).plans == []

    assert Plan.objects.get(task=waiting).data == b"plan.out"
    assert StateVersion.objects.get(id=state.id).data == b"{}"
    assert AuditEvent.objects.count() == 1


def test_it_prunes_in_batches_and_only_once(settings, workspace, monkeypatch):
    settings.IAC_RETENTION_PLAN_DAYS = 1
    monkeypatch.setattr(retention, "BATCH", 2)
    runs = [_run(workspace, status=RunStatus.PLANNED, ended_days_ago=5) for _ in range(5)]

    assert sorted(retention.retention_prune().plans) == [r.id for r in runs]
    assert retention.retention_prune().plans == []


def test_it_runs_as_a_sweep_step(settings, workspace, monkeypatch):
    settings.IAC_RETENTION_PLAN_DAYS = 1
    monkeypatch.setattr(retention, "_last_pass", None)
    old = _run(workspace, status=RunStatus.APPLIED, ended_days_ago=2)

    results = sweep.sweep([step for step in sweep.SWEEP_STEPS if step[0] == "retention"])

    assert results == {"retention": {"plans": 1, "logs": 0}}
    assert Task.objects.get(id=old.id).plan_pruned_at is not None
    # The next tick within the hour does nothing (no scan of the runs table every 5 s).
    assert sweep.sweep([("retention", retention.step_retention)]) == {"retention": None}
