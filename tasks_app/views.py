"""Server-rendered pages: workspaces, one workspace, one run.

Views parse, call a service, render. Every POST redirects (post/redirect/get), and a refusal
from a service (Conflict, a stale plan) becomes a message on the page, never a 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import OuterRef, Subquery
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from iacplatform.api_errors import flatten_errors
from iacplatform.errors import NotFound, PlatformError
from iacplatform.permissions import (
    Action,
    allowed_actions,
    can_create_workspace,
    can_use_pool,
    creating_team,
    is_site_admin,
    readable_workspaces,
    require,
    run_for,
    workspace_for,
)
from tasks_app.models import AccessLevel, ApiToken, Job, JobKind, JobStatus, Plan, Task, Workspace, WorkspaceAccess
from tasks_app.selectors import LOG_PAGE_BYTES, LOG_TAIL_BYTES, run_log_read, run_log_tail, run_waiting_reason
from tasks_app.serializers import RunCreateSerializer
from tasks_app.services.retention import log_pruned_note, plan_pruned_note
from tasks_app.services.runs import (
    run_cancel,
    run_confirm,
    run_create,
    run_discard,
    run_prepare,
)
from tasks_app.services.tokens import token_create, token_revoke
from tasks_app.services.warmups import confirm_target
from tasks_app.states import FINAL, Operation, RunStatus


class WorkspaceCreateForm(forms.ModelForm):
    class Meta:
        model = Workspace
        fields = ["name", "pool", "auto_apply"]


def _workspace(request: HttpRequest, workspace_id: int) -> Workspace:
    """The workspace if the user may read it; a 404 page otherwise (its existence is not
    revealed)."""
    try:
        return workspace_for(request.user, Action.READ, workspace_id)
    except NotFound as exc:
        raise Http404(str(exc)) from exc


def _task(request: HttpRequest, task_id: int) -> Task:
    try:
        return run_for(request.user, Action.READ, task_id)
    except NotFound as exc:
        raise Http404(str(exc)) from exc


@login_required
def workspace_list(request: HttpRequest) -> HttpResponse:
    may_create = can_create_workspace(request.user)
    if request.method == "POST":
        form = WorkspaceCreateForm(request.POST)
        if not may_create:
            messages.error(request, "Only site admins and teams allowed to create workspaces can create one.")
            return redirect("workspace-list")
        if form.is_valid() and not can_use_pool(request.user, form.cleaned_data["pool"]):
            form.add_error("pool", "none of your teams may use this pool")
        if form.is_valid():
            ws = form.save()
            team = None if is_site_admin(request.user) else creating_team(request.user)
            if team is not None:
                WorkspaceAccess.objects.create(workspace=ws, team=team, level=AccessLevel.ADMIN)
            messages.success(request, f"Workspace {ws.name} created. Upload a configuration through the API to run it.")
            return redirect("workspace-detail", workspace_id=ws.id)
    else:
        form = WorkspaceCreateForm()
    latest = Task.objects.filter(workspace=OuterRef("pk")).order_by("-id")
    workspaces = (
        readable_workspaces(request.user).select_related("pool")
        .annotate(
            latest_run_id=Subquery(latest.values("id")[:1]), latest_run_status=Subquery(latest.values("status")[:1])
        )
        .order_by("name")
    )
    return render(request, "tasks_app/workspace_list.html",
                  {"workspaces": workspaces, "form": form if may_create else None})


@login_required
def workspace_detail(request: HttpRequest, workspace_id: int) -> HttpResponse:
    ws = _workspace(request, workspace_id)
    context = {
        "workspace": ws,
        "allowed": {str(a) for a in allowed_actions(request.user, ws)},
        # Newest first; a page of history is enough here, the API lists everything.
        "runs": ws.tasks.order_by("-id")[:50],
        "variables": ws.variables.order_by("category", "key"),
        "state_versions": ws.state_versions.order_by("-serial")[:20],
        "configuration": ws.configuration_versions.order_by("-id").first(),
        "Operation": Operation,
    }
    return render(request, "tasks_app/workspace_detail.html", context)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


@login_required
@require_POST
def workspace_run_create(request: HttpRequest, workspace_id: int) -> HttpResponse:
    ws = _workspace(request, workspace_id)
    operation = request.POST.get("operation", "")
    # The run options (the page's "Run options"), checked as the API checks them.
    options = RunCreateSerializer(data={
        "operation": operation or Operation.PLAN, "mode": request.POST.get("mode") or "normal",
        "targets": _lines(request.POST.get("targets", "")), "replace": _lines(request.POST.get("replace", "")),
    })
    if not options.is_valid():
        messages.error(request, flatten_errors(options.errors))
        return redirect("workspace-detail", workspace_id=ws.id)
    try:
        require(request.user, Action.QUEUE_PLAN if operation == Operation.PLAN else Action.QUEUE_APPLY, ws)
        task = run_create(workspace=ws, operation=operation, actor=request.user, mode=options.validated_data["mode"],
                          targets=options.validated_data["targets"], replace=options.validated_data["replace"])
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
    task = _task(request, task_id)
    allowed = {str(a) for a in allowed_actions(request.user, task.workspace)}
    if task.status == RunStatus.APPLY_PENDING and str(Action.CONFIRM) in allowed:
        # Opening the page of a run awaiting Confirm is the "Confirm dialog opened" trigger:
        # a warmup gets queued now, so the dir is likely warm by the time the user clicks.
        task = run_prepare(task_id=task.id)
    task = Task.objects.select_related("workspace__pool").get(id=task.id)
    plan = Plan.objects.filter(task=task).only("sha256", "size", "summary", "created_at").first()
    # Only the end of the log: a log may hold IAC_MAX_LOG_BYTES; the page links to the whole.
    log_text, log_start, log_offset = run_log_tail(task_id=task.id, size=LOG_TAIL_BYTES, log_size=task.log_size)
    context = {
        "task": task,
        "allowed": allowed,
        "workspace": task.workspace,
        "events": task.events.order_by("id"),
        "plan": plan,
        "summary": plan.summary if plan else {},
        "log_text": log_text,
        "log_offset": log_offset,
        "log_start": log_start,  # bytes of the log not shown (the download has them)
        "log_pruned": log_pruned_note(task),
        "plan_pruned": plan_pruned_note(task),
        "waiting_reason": run_waiting_reason(task),
        "is_pending_apply": task.status == RunStatus.APPLY_PENDING,
        "is_final": task.status in FINAL,
        "warm": warm_explanation(task) if task.status == RunStatus.APPLY_PENDING else None,
        "confirm_to_apply_ms": _ms_between(task.confirmed_at, task.apply_started_at),
        "confirm_to_first_log_ms": _ms_between(task.confirmed_at, task.first_apply_log_at),
        "jobs": task.jobs.select_related("agent").order_by("id"),
    }
    return render(request, "tasks_app/run_detail.html", context)


@login_required
def run_log_download(request: HttpRequest, task_id: int) -> StreamingHttpResponse:
    """The whole log of a run as text/plain, streamed a page at a time (never all in memory)."""
    task = _task(request, task_id)

    def pages() -> Iterator[bytes]:
        offset = 0
        while True:
            text, offset = run_log_read(task_id=task.id, offset=offset, limit=LOG_PAGE_BYTES)
            if not text:
                return
            yield text.encode()

    response = StreamingHttpResponse(pages(), content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="run-{task.id}.log"'
    response["X-Content-Type-Options"] = "nosniff"
    return response


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


# API tokens ---------------------------------------------------------------------------------


@login_required
def tokens_page(request: HttpRequest) -> HttpResponse:
    """The user's API tokens: create (shown once, on the page that answers the POST) and
    revoke."""
    new_token = None
    if request.method == "POST":
        try:
            token, plain = token_create(user=request.user, name=request.POST.get("name", ""))
        except PlatformError as exc:
            messages.error(request, _error_text(exc))
        else:
            new_token = {"name": token.name, "token": plain}
    tokens = ApiToken.objects.filter(user=request.user)
    return render(request, "tasks_app/tokens.html", {"tokens": tokens, "new_token": new_token})


@login_required
@require_POST
def token_revoke_view(request: HttpRequest, key: str) -> HttpResponse:
    try:
        token_revoke(user=request.user, key=key, actor=request.user)
    except PlatformError as exc:
        messages.error(request, _error_text(exc))
    else:
        messages.success(request, "Token revoked.")
    return redirect("tokens")

