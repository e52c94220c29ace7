"""The Confirm Apply dialog of the run page and the run actions beside it: confirm,
discard, cancel (H2 of the live dashboard)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils import timezone
from django.views.decorators.http import require_POST

from iacplatform.errors import NotFound, PlatformError
from iacplatform.permissions import Action, require, run_for
from tasks_app.models import Job, JobKind, JobStatus, Task
from tasks_app.services.runs import run_cancel, run_confirm, run_discard
from tasks_app.services.warmups import confirm_target
from tasks_app.states import RunStatus


def _task(request: HttpRequest, task_id: int) -> Task:
    try:
        return run_for(request.user, Action.READ, task_id)
    except NotFound as exc:
        raise Http404(str(exc)) from exc


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


def confirm_dialog_context(task: Task, allowed: set[str]) -> dict:
    """What the dialog partial (tasks_app/_confirm_dialog.html) needs."""
    pending = task.status == RunStatus.APPLY_PENDING
    return {
        "is_pending_apply": pending,
        "warm": warm_explanation(task) if pending else None,
    }


def _error_text(exc: PlatformError) -> str:
    return str(exc)


@login_required
@require_POST
def run_confirm_view(request: HttpRequest, task_id: int) -> HttpResponse:
    task = _task(request, task_id)
    try:
        require(request.user, Action.CONFIRM, task.workspace)
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
    task = _task(request, task_id)
    try:
        require(request.user, Action.DISCARD, task.workspace)
        run_discard(task_id=task.id, actor=request.user, comment=request.POST.get("comment", ""))
    except PlatformError as exc:
        messages.error(request, _error_text(exc))
    else:
        messages.success(request, "Run discarded.")
    return redirect("run-detail", task_id=task.id)


@login_required
@require_POST
def run_cancel_view(request: HttpRequest, task_id: int) -> HttpResponse:
    task = _task(request, task_id)
    force = request.POST.get("force") == "1"
    try:
        require(request.user, Action.FORCE_CANCEL if force else Action.CANCEL, task.workspace)
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


def confirm_dialog_html(task_id: int, user) -> str:
    """The dialog as an HTML fragment (root element `id="confirm-dialog"`), for the run page's
    websocket to swap in whenever the run or its warmup changes (tasks_app/consumers.py)."""
    from django.template.loader import render_to_string

    from iacplatform.permissions import allowed_actions

    task = run_for(user, Action.READ, task_id)
    allowed = {str(a) for a in allowed_actions(user, task.workspace)}
    context = {"task": task, "allowed": allowed, "oob": True, **confirm_dialog_context(task, allowed)}
    return render_to_string("tasks_app/_confirm_dialog.html", context)
