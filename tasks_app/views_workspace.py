"""The workspace page's forms: settings, lock / unlock, team access, variables, a
configuration upload, and the diff between two state versions.

Each view parses, calls the rule's owner (tasks_app/services/workspaces.py, variables.py,
configs.py: the services the REST API calls), and redirects back to the page's
section (post/redirect/get). A user who cannot read the workspace gets 404; one who can read
but lacks the level gets 403 with the reason; bad input becomes a message on the page and
changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from agents_app.models import AgentPool
from iacplatform.api_errors import flatten_errors
from iacplatform.errors import Forbidden, NotFound, PlatformError
from iacplatform.permissions import Action, require, workspace_for
from tasks_app.models import Variable, VariableCategory, Workspace
from tasks_app.serializers import VariableSerializer
from tasks_app.services import variables
from tasks_app.services.audit import audit_record
from tasks_app.services.configs import configuration_create_from_archive
from tasks_app.services.workspaces import (
    workspace_access_remove,
    workspace_access_set,
    workspace_remote_state_consumers_change,
    workspace_update,
)
from tasks_app.state_diff import TooLargeToCompare, state_versions_diff
from tasks_app.vcs.connections import workspace_follow_repository
from tasks_app.workflows.models import NotificationDestination
from tasks_app.workflows.notifications import notification_destination_test


def _back(workspace: Workspace, section: str) -> HttpResponse:
    return redirect(reverse("workspace-detail", args=[workspace.id]) + f"#{section}")


def refused(request: HttpRequest, exc: Forbidden) -> HttpResponse:
    return render(request, "tasks_app/workspace/refused.html", {"reason": str(exc)}, status=403)


def workspace_form(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Login required, POST only; NotFound → 404, Forbidden → 403 page."""

    @login_required
    @require_POST
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except NotFound as exc:
            raise Http404(str(exc)) from exc
        except Forbidden as exc:
            return refused(request, exc)

    return wrapper


def _checkbox(request: HttpRequest, name: str) -> bool:
    return request.POST.get(name) in ("on", "true", "1")


# Settings, lock, access ------------------------------------------------------------------


@workspace_form
def workspace_settings(request: HttpRequest, workspace_id: int) -> HttpResponse:
    ws = workspace_for(request.user, Action.READ, workspace_id)
    changes: dict[str, Any] = {"auto_apply": _checkbox(request, "auto_apply")}
    pool_id = request.POST.get("pool", "")
    if pool_id:
        valid = pool_id.isascii() and pool_id.isdigit() and len(pool_id) <= 18  # fits a bigint
        pool = AgentPool.objects.filter(id=int(pool_id)).first() if valid else None
        if pool is None:
            messages.error(request, "Settings not saved: no such pool.")
            return _back(ws, "settings")
        changes["pool"] = pool
    try:
        workspace_update(workspace=ws, actor=request.user, changes=changes)
    except (Forbidden, NotFound):
        raise
    except PlatformError as exc:
        messages.error(request, f"Settings not saved: {exc}")
    else:
        messages.success(request, "Settings saved.")
    return _back(ws, "settings")


@workspace_form
def workspace_vcs(request: HttpRequest, workspace_id: int) -> HttpResponse:
    """The repository the workspace follows (`admin`): the API's service, the API's checks."""
    ws = workspace_for(request.user, Action.READ, workspace_id)
    connection = request.POST.get("connection", "").strip() or None
    patterns = [p.strip() for p in request.POST.get("trigger_patterns", "").replace(",", "\n").splitlines()
                if p.strip()]
    try:
        workspace_follow_repository(
            workspace=ws, actor=request.user, connection=connection,
            repository=request.POST.get("repository", "").strip(), branch=request.POST.get("branch", "").strip(),
            working_directory=request.POST.get("working_directory", "").strip(), trigger_patterns=patterns,
            tag_regex=request.POST.get("tag_regex", "").strip(),
            keep_pending_runs=_checkbox(request, "keep_pending_runs"))
    except (Forbidden, NotFound):
        raise
    except PlatformError as exc:
        messages.error(request, f"Repository not saved: {exc}")
    else:
        messages.success(request, f"The workspace follows {ws.vcs_repository} ({ws.vcs_branch})." if connection
                         else "The workspace follows no repository.")
    return _back(ws, "repository")


@workspace_form
def workspace_lock(request: HttpRequest, workspace_id: int, lock: bool) -> HttpResponse:
    ws = workspace_for(request.user, Action.READ, workspace_id)
    workspace_update(workspace=ws, actor=request.user, changes={"locked": lock})
    messages.success(request, "Workspace locked: new runs wait until it is unlocked." if lock
                     else "Workspace unlocked: waiting runs start.")
    return _back(ws, "settings")


@workspace_form
def workspace_access(request: HttpRequest, workspace_id: int) -> HttpResponse:
    ws = workspace_for(request.user, Action.READ, workspace_id)
    team = request.POST.get("team", "").strip()
    try:
        if request.POST.get("remove"):
            workspace_access_remove(workspace=ws, team_name=team, actor=request.user)
            messages.success(request, f"Team {team} no longer has access.")
        else:
            level = request.POST.get("level", "")
            workspace_access_set(workspace=ws, team_name=team, level=level, actor=request.user)
            messages.success(request, f"Team {team} now has '{level}'.")
    except Forbidden:
        raise
    except PlatformError as exc:  # NotFound here is a team, not the workspace: say so on the page
        messages.error(request, f"Access not changed: {exc}")
    return _back(ws, "settings")


@workspace_form
def workspace_sharing(request: HttpRequest, workspace_id: int) -> HttpResponse:
    """Remote state sharing from the page: the workspaces whose runs may read this one's
    state and outputs (`terraform_remote_state`), replaced by the form's choice (`admin`)."""
    ws = workspace_for(request.user, Action.READ, workspace_id)
    ids = request.POST.getlist("consumers")
    if not all(i.isascii() and i.isdigit() and len(i) <= 18 for i in ids):
        messages.error(request, "Sharing not changed: a workspace id is not a number.")
        return _back(ws, "settings")
    consumers = list(Workspace.objects.filter(id__in=[int(i) for i in ids]).exclude(id=ws.id))
    try:
        workspace_remote_state_consumers_change(workspace=ws, actor=request.user, consumers=consumers, mode="replace")
        names = ", ".join(sorted(c.name for c in consumers)) or "none"
        messages.success(request, f"Runs of these workspaces may read this one's state and outputs: {names}.")
    except Forbidden:
        raise
    except PlatformError as exc:  # a chosen workspace the user may not read: as if it did not exist
        messages.error(request, f"Sharing not changed: {exc}")
    return _back(ws, "settings")


# Variables ----------------------------------------------------------------------------------


def _variable_data(request: HttpRequest, *, existing: Variable | None) -> dict[str, Any]:
    data: dict[str, Any] = {"key": request.POST.get("key", "").strip(),
                            "category": request.POST.get("category", VariableCategory.TERRAFORM)}
    value = request.POST.get("value", "")
    sensitive = _checkbox(request, "sensitive")
    if existing is not None and existing.sensitive:
        # Write-only: a blank value keeps the secret, and the box cannot be unticked here.
        sensitive = True
        if value:
            data["value"] = value
    else:
        data["value"] = value
    data["sensitive"] = sensitive
    return data


@workspace_form
def variable_add(request: HttpRequest, workspace_id: int) -> HttpResponse:
    ws = workspace_for(request.user, Action.EDIT_VARIABLES, workspace_id)
    # The REST API's serializer checks each field's shape; the service, the rest.
    form = VariableSerializer(data=_variable_data(request, existing=None))
    if not form.is_valid():
        messages.error(request, f"Variable not added: {flatten_errors(form.errors)}")
        return _back(ws, "variables")
    try:
        var = variables.variable_create(workspace=ws, actor=request.user, **form.validated_data)
    except PlatformError as exc:
        messages.error(request, f"Variable not added: {exc}")
        return _back(ws, "variables")
    messages.success(request, f"Variable {var.key} added.")
    return _back(ws, "variables")


def _variable(request: HttpRequest, variable_id: int) -> Variable:
    var = Variable.objects.select_related("workspace").filter(id=variable_id).first()
    if var is None:
        raise NotFound("no such variable")
    try:
        require(request.user, Action.EDIT_VARIABLES, var.workspace)
    except NotFound as exc:
        raise NotFound("no such variable") from exc
    return var


@workspace_form
def variable_edit(request: HttpRequest, variable_id: int) -> HttpResponse:
    var = _variable(request, variable_id)
    form = VariableSerializer(var, data=_variable_data(request, existing=var), partial=True)
    if not form.is_valid():
        messages.error(request, f"Variable {var.key} not saved: {flatten_errors(form.errors)}")
        return _back(var.workspace, "variables")
    try:
        var = variables.variable_update(variable=var, actor=request.user, changes=form.validated_data)
    except PlatformError as exc:
        messages.error(request, f"Variable {var.key} not saved: {exc}")
        return _back(var.workspace, "variables")
    messages.success(request, f"Variable {var.key} saved.")
    return _back(var.workspace, "variables")


@workspace_form
def variable_remove(request: HttpRequest, variable_id: int) -> HttpResponse:
    var = _variable(request, variable_id)
    variables.variable_delete(variable=var, actor=request.user)
    messages.success(request, f"Variable {var.key} deleted.")
    return _back(var.workspace, "variables")


# Configuration upload -----------------------------------------------------------------------


@workspace_form
def configuration_upload(request: HttpRequest, workspace_id: int) -> HttpResponse:
    ws = workspace_for(request.user, Action.UPLOAD_CONFIGURATION, workspace_id)
    upload = request.FILES.get("archive")
    if upload is None or not upload.size:
        messages.error(request, "Configuration not uploaded: choose a .tar.gz file of your Terraform files.")
        return _back(ws, "configuration")
    # One byte past the limit is enough for the service to refuse an oversize archive.
    data = upload.read(settings.IAC_MAX_CONFIG_BYTES + 1)
    try:
        cv = configuration_create_from_archive(workspace=ws, data=data, actor=request.user)
    except PlatformError as exc:
        messages.error(request, f"Configuration not uploaded: {exc}")
        return _back(ws, "configuration")
    audit_record(actor=request.user, action="configuration.upload", obj=ws,
                 data={"configuration_version": cv.id, "sha256": cv.sha256})
    messages.success(request, f"Configuration {cv.id} uploaded ({', '.join(cv.files)}).")
    return _back(ws, "configuration")


# State diff ---------------------------------------------------------------------------------


def _serial(value: str | None) -> int | None:
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 18:
        return None
    return int(value)


@login_required
@require_GET
def state_diff(request: HttpRequest, workspace_id: int) -> HttpResponse:
    """The masked diff between two serials (`?from=&to=`). Reading state is `write` (the raw
    state holds the infrastructure's secrets), masked or not."""
    try:
        ws = workspace_for(request.user, Action.READ_STATE, workspace_id)
    except NotFound as exc:
        raise Http404(str(exc)) from exc
    except Forbidden as exc:
        return refused(request, exc)
    old, new = _serial(request.GET.get("from")), _serial(request.GET.get("to"))
    error, diff = "", None
    if old is None or new is None:
        error = "Choose two state serials to compare."
    else:
        try:
            diff = state_versions_diff(workspace_id=ws.id, old_serial=old, new_serial=new)
        except TooLargeToCompare as exc:
            error = str(exc)
        if diff is None and not error:
            error = f"Serial {old} or {new} is not a state version of this workspace."
    serials = ws.state_versions.order_by("-serial").values_list("serial", flat=True)[:100]
    return render(request, "tasks_app/workspace_state_diff.html",
                  {"workspace": ws, "diff": diff, "error": error, "serials": serials, "old": old, "new": new},
                  status=400 if error else 200)


@workspace_form
def notification_test(request: HttpRequest, destination_id: int) -> HttpResponse:
    """The workspace page's "Send a test" (admin): a delivery stored and sent like any other."""
    destination = NotificationDestination.objects.select_related("workspace").filter(id=destination_id).first()
    if destination is None:
        raise NotFound("no such notification destination")
    workspace_for(request.user, Action.READ, destination.workspace_id)
    notification_destination_test(destination=destination, actor=request.user)
    messages.success(request, f"A test notification to {destination.name} is on its way: its delivery shows below.")
    return _back(destination.workspace, "notifications")
