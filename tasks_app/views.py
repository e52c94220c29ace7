"""Server-rendered pages: workspaces, one workspace, one run.

Views parse, call a service, render. Every POST redirects (post/redirect/get), and a refusal
from a service (Conflict, a stale plan) becomes a message on the page, never a 500.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import OuterRef, Subquery
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from iacplatform.errors import PlatformError
from tasks_app.models import Job, JobKind, JobStatus, Plan, Task, Workspace
from tasks_app.selectors import run_log_read
from tasks_app.services.runs import (
    run_cancel,
    run_confirm,
    run_create,
    run_discard,
    run_prepare,
    runs_waiting_reason,
)
from tasks_app.services.warmups import confirm_target
from tasks_app.states import FINAL, Operation, RunStatus


class WorkspaceCreateForm(forms.ModelForm):
    class Meta:
        model = Workspace
        fields = ["name", "pool", "auto_apply"]


@login_required
def workspace_list(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = WorkspaceCreateForm(request.POST)
        if form.is_valid():
            ws = form.save()
            messages.success(request, f"Workspace {ws.name} created. Upload a configuration through the API to run it.")
            return redirect("workspace-detail", workspace_id=ws.id)
    else:
        form = WorkspaceCreateForm()
    latest = Task.objects.filter(workspace=OuterRef("pk")).order_by("-id")
    workspaces = (
        Workspace.objects.select_related("pool")
        .annotate(
            latest_run_id=Subquery(latest.values("id")[:1]), latest_run_status=Subquery(latest.values("status")[:1])
        )
        .order_by("name")
    )
    return render(request, "tasks_app/workspace_list.html", {"workspaces": workspaces, "form": form})


@login_required
def workspace_detail(request: HttpRequest, workspace_id: int) -> HttpResponse:
    ws = get_object_or_404(Workspace.objects.select_related("pool"), id=workspace_id)
    context = {
        "workspace": ws,
        # Newest first; a page of history is enough here, the API lists everything.
        "runs": ws.tasks.order_by("-id")[:50],
        "variables": ws.variables.order_by("category", "key"),
        "state_versions": ws.state_versions.order_by("-serial")[:20],
        "configuration": ws.configuration_versions.order_by("-id").first(),
        "Operation": Operation,
    }
    return render(request, "tasks_app/workspace_detail.html", context)


@login_required
@require_POST
def workspace_run_create(request: HttpRequest, workspace_id: int) -> HttpResponse:
    ws = get_object_or_404(Workspace, id=workspace_id)
    operation = request.POST.get("operation", "")
    try:
        task = run_create(workspace=ws, operation=operation, actor=request.user)
    except PlatformError as exc:
        messages.error(request, _error_text(exc))
        return redirect("workspace-detail", workspace_id=ws.id)
    messages.success(request, f"Run {task.id} queued.")
    return redirect("run-detail", task_id=task.id)


@dataclass
class WarmExplanation:
    warm: bool  # True: the apply is expected to start on the warm dir
    text: str


def warm_explanation(task: Task, *, now: datetime | None = None) -> WarmExplanation:
    """What Confirm will do right now, in the words run_confirm uses to pick the path."""
    now = now or timezone.now()
    target = confirm_target(task, now=now)
    if target.slot is not None:
        expires = (
            f" (expires {timezone.localtime(task.warmup_expires_at):%Y-%m-%d %H:%M:%S %Z})"
            if task.warmup_expires_at
            else ""
        )
        return WarmExplanation(True, f"Apply will start warm on agent {target.slot.agent.name}{expires}.")
    if target.wait_for is not None:
        wait = settings.IAC_WARMUP_WAIT_SECONDS
        return WarmExplanation(
            True, f"A warmup is running on agent {target.wait_for.name}: a confirmed apply starts there the moment "
            f"it is ready (it runs cold if that takes more than {wait:g}s or the warmup fails).",
        )
    cold_reason = target.cold_reason
    # run_prepare (called when this page is shown) may just have queued a warmup: say so.
    if Job.objects.filter(task=task, kind=JobKind.WARMUP, status=JobStatus.QUEUED).exists():
        return WarmExplanation(
            False, "No warm dir yet: a warmup job is queued, waiting for an agent. Confirming now runs cold."
        )
    return WarmExplanation(False, f"Apply will run cold: {cold_reason}.")


def _ms_between(start: datetime | None, end: datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000)


@login_required
def run_detail(request: HttpRequest, task_id: int) -> HttpResponse:
    task = get_object_or_404(Task.objects.select_related("workspace__pool"), id=task_id)
    if task.status == RunStatus.APPLY_PENDING:
        # Opening the page of a run awaiting Confirm is the "Confirm dialog opened" trigger:
        # a warmup gets queued now, so the dir is likely warm by the time the user clicks.
        task = run_prepare(task_id=task.id)
    task = Task.objects.select_related("workspace__pool").get(id=task.id)
    plan = Plan.objects.filter(task=task).only("sha256", "size", "summary", "created_at").first()
    log_text, log_offset = run_log_read(task_id=task.id, offset=0)
    context = {
        "task": task,
        "workspace": task.workspace,
        "events": task.events.order_by("id"),
        "plan": plan,
        "summary": plan.summary if plan else {},
        "log_text": log_text,
        "log_offset": log_offset,
        "waiting_reason": runs_waiting_reason(task),
        "is_pending_apply": task.status == RunStatus.APPLY_PENDING,
        "is_final": task.status in FINAL,
        "warm": warm_explanation(task) if task.status == RunStatus.APPLY_PENDING else None,
        "confirm_to_apply_ms": _ms_between(task.confirmed_at, task.apply_started_at),
        "confirm_to_first_log_ms": _ms_between(task.confirmed_at, task.first_apply_log_at),
        "jobs": task.jobs.select_related("agent").order_by("id"),
    }
    return render(request, "tasks_app/run_detail.html", context)


def _error_text(exc: PlatformError) -> str:
    return str(exc)


@login_required
@require_POST
def run_confirm_view(request: HttpRequest, task_id: int) -> HttpResponse:
    task = get_object_or_404(Task, id=task_id)
    try:
        result = run_confirm(task_id=task.id, actor=request.user, comment=request.POST.get("comment", ""))
    except PlatformError as exc:
        messages.error(request, _error_text(exc))
    else:
        if result.refused:
            messages.error(request, f"Apply refused: {result.refused}")
        else:
            messages.success(request, "Apply confirmed.")
    return redirect("run-detail", task_id=task.id)


@login_required
@require_POST
def run_discard_view(request: HttpRequest, task_id: int) -> HttpResponse:
    task = get_object_or_404(Task, id=task_id)
    try:
        run_discard(task_id=task.id, actor=request.user, comment=request.POST.get("comment", ""))
    except PlatformError as exc:
        messages.error(request, _error_text(exc))
    else:
        messages.success(request, "Run discarded.")
    return redirect("run-detail", task_id=task.id)


@login_required
@require_POST
def run_cancel_view(request: HttpRequest, task_id: int) -> HttpResponse:
    task = get_object_or_404(Task, id=task_id)
    force = request.POST.get("force") == "1"
    try:
        task = run_cancel(task_id=task.id, actor=request.user, force=force, comment=request.POST.get("comment", ""))
    except PlatformError as exc:
        messages.error(request, _error_text(exc))
    else:
        if task.status == RunStatus.CANCELLED:
            messages.success(request, "Run cancelled.")
        else:
            # Running terraform is interrupted through the agent's next heartbeat.
            messages.success(request, "Cancel requested: the agent stops terraform at its next heartbeat.")
    return redirect("run-detail", task_id=task.id)
