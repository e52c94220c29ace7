"""Server-rendered pages: workspaces, one workspace, API tokens (the run page: views_runs.py,
its Confirm dialog and actions: views_confirm.py).

Views parse, call a service, render. Every POST redirects (post/redirect/get), and a refusal
from a service (Conflict, a stale plan) becomes a message on the page, never a 500.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_POST

from agents_app.models import AgentPool
from iacplatform.api_errors import flatten_errors
from iacplatform.errors import PlatformError
from iacplatform.permissions import (
    Action,
    allowed_actions,
    can_create_workspace,
    can_use_pool,
    creating_team,
    is_site_admin,
    readable_workspaces,
    require,
)
from tasks_app.models import AccessLevel, ApiToken, VariableCategory, Workspace, WorkspaceAccess
from tasks_app.page_access import readable_workspace
from tasks_app.selectors_workspaces import SEARCH_MAX_LENGTH, workspace_rows, workspace_runs
from tasks_app.serializers import RunCreateSerializer
from tasks_app.services.runs import (
    run_create,
)
from tasks_app.services.tokens import token_create, token_revoke
from tasks_app.states import Operation
from tasks_app.vcs.models import VcsConnection
from tasks_app.workflows.set_reads import sets_applying
from tasks_app.workflows.states import Health


class WorkspaceCreateForm(forms.ModelForm):
    class Meta:
        model = Workspace
        fields = ["name", "pool", "auto_apply"]


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
    search = request.GET.get("q", "")[:SEARCH_MAX_LENGTH]
    attention = request.GET.get("attention") == "1"
    health = request.GET.get("health", "")
    health = health if health in Health.values else ""
    context = {
        "workspaces": workspace_rows(request.user, search=search, attention=attention, health=health),
        "search": search,
        "attention": attention,
        "health": health,
        "healths": Health.choices,
        "form": form if may_create else None,
    }
    # The search box and the filter ask for the table alone (same URL, `HX-Request` set); a
    # history restore (back button after a cache miss) needs the whole page.
    partial = bool(request.htmx) and not request.htmx.history_restore_request
    response = render(request, "tasks_app/workspace/_table.html" if partial else "tasks_app/workspace_list.html",
                      context)
    patch_vary_headers(response, ["HX-Request"])  # one URL, two bodies: caches must tell them apart
    return response


@login_required
def workspace_detail(request: HttpRequest, workspace_id: int) -> HttpResponse:
    ws = readable_workspace(request, workspace_id)
    allowed = {str(a) for a in allowed_actions(request.user, ws)}
    context = {
        "workspace": ws,
        "allowed": allowed,
        "runs": workspace_runs(ws.id),
        "variables": ws.variables.order_by("category", "key"),
        "variable_categories": VariableCategory.choices,
        "state_versions": ws.state_versions.select_related("task").order_by("-serial")[:20],
        "configuration": ws.configuration_versions.order_by("-id").first(),
        "access": ws.access.select_related("team").order_by("team__name"),
        "access_levels": AccessLevel.choices,
        "Operation": Operation,
        "variable_sets": sets_applying(ws.id).prefetch_related("variables"),
        "destinations": ws.notification_destinations.prefetch_related("deliveries__attempt_rows").order_by("name"),
        "trigger_sources": ws.trigger_sources.order_by("name"),
        "state_consumers": ws.remote_state_consumers.order_by("name"),
        "tag_bindings": sorted(ws.tag_bindings.items()),
    }
    if "settings" in allowed:
        context["pools"] = [p for p in AgentPool.objects.order_by("name")
                            if p.id == ws.pool_id or can_use_pool(request.user, p)]
        context["teams"] = Group.objects.order_by("name").values_list("name", flat=True)
        context["vcs_connections"] = VcsConnection.objects.order_by("name").values_list("name", flat=True)
        context["sharing_candidates"] = readable_workspaces(request.user).exclude(id=ws.id).order_by("name")
    return render(request, "tasks_app/workspace_detail.html", context)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


@login_required
@require_POST
def workspace_run_create(request: HttpRequest, workspace_id: int) -> HttpResponse:
    ws = readable_workspace(request, workspace_id)
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
        messages.error(request, str(exc))
        return redirect("workspace-detail", workspace_id=ws.id)
    messages.success(request, f"Run {task.id} queued.")
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
            messages.error(request, str(exc))
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
        messages.error(request, str(exc))
    else:
        messages.success(request, "Token revoked.")
    return redirect("tokens")

