"""The user REST API (DRF, `Authorization: Token <key>`): thin views that parse, call a
service and render. Errors are shaped by iacplatform.api_errors (JSON with `detail`)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import BaseParser, JSONParser
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.response import Response

from iacplatform.errors import Conflict, Forbidden
from iacplatform.pagination import NewestFirst, StateVersionsNewestFirst
from iacplatform.permissions import (
    Action,
    can_create_workspace,
    can_use_pool,
    creating_team,
    is_site_admin,
    readable_workspaces,
    require,
    run_for,
    workspace_for,
)
from tasks_app.longpoll import long_polling
from tasks_app.models import (
    AccessLevel,
    ConfigurationVersion,
    StateVersion,
    Task,
    Variable,
    Workspace,
    WorkspaceAccess,
)
from tasks_app.selectors import (
    LOG_PAGE_BYTES,
    masked_values_for,
    run_log_read,
    state_outputs,
    state_tracks_resources,
)
from tasks_app.serializers import (
    RUN_WAIT_MAX_SECONDS,
    ConfigurationFilesSerializer,
    ConfigurationVersionSerializer,
    OutputSerializer,
    RunCancelSerializer,
    RunConfirmSerializer,
    RunCreateSerializer,
    RunListQuerySerializer,
    RunLogQuerySerializer,
    RunLogSerializer,
    RunSerializer,
    RunWaitQuerySerializer,
    StateVersionSerializer,
    VariableSerializer,
    WorkspaceSerializer,
)
from tasks_app.services.audit import audit_record
from tasks_app.services.configs import (
    configuration_create_from_archive,
    configuration_create_from_files,
)
from tasks_app.services.retention import log_pruned_note
from tasks_app.services.runs import (
    run_cancel,
    run_confirm,
    run_create,
    run_discard,
    run_prepare,
)
from tasks_app.services.variables import variable_create, variable_delete, variable_update
from tasks_app.services.workspaces import workspace_default_pool, workspace_update
from tasks_app.states import FINAL, Operation, RunStatus, is_final
from tasks_app.workflows.states import Health

# JSON only: form encodings would make `{"force": "false"}`-style ambiguity possible again
# and nothing in the API is meant to be posted from an HTML form.
JSON_ONLY = [JSONParser]


def _workspace(request: Request, workspace_id: int, action: Action) -> Workspace:
    """The workspace if the user may do `action` on it: 404 when they cannot read it."""
    return workspace_for(request.user, action, workspace_id)


def _task(request: Request, task_id: int, action: Action) -> Task:
    """The run if the user may do `action` on its workspace: 404 when they cannot read it."""
    return run_for(request.user, action, task_id)


def _run_queryset() -> QuerySet[Task]:
    # `plan` is joined for its summary; its encrypted bytes (up to IAC_MAX_PLAN_BYTES) are not read.
    return (
        Task.objects.select_related("workspace", "plan", "configuration_version", "policy_check__overridden_by")
        .defer("plan__encrypted_data", "plan__encrypted_json", "configuration_version__archive")
        .prefetch_related("events")
    )


def _run_response(request: Request, task_id: int, code: int = status.HTTP_200_OK) -> Response:
    # Re-read after the service: its on_commit follow-ups (queue start, warmups) may have moved the run.
    # The request tells the serializer what the caller may see unmasked.
    return Response(RunSerializer(_run_queryset().get(id=task_id), context={"request": request}).data, status=code)


# Workspaces ---------------------------------------------------------------------------------


def _workspace_queryset() -> QuerySet[Workspace]:
    latest = ConfigurationVersion.objects.filter(workspace=OuterRef("pk")).order_by("-id").values("id")[:1]
    return Workspace.objects.annotate(latest_cv_id=Subquery(latest)).order_by("name")


class WorkspaceListCreate(generics.ListCreateAPIView):
    serializer_class = WorkspaceSerializer
    parser_classes = JSON_ONLY

    def get_queryset(self) -> QuerySet[Workspace]:
        workspaces = _workspace_queryset().filter(id__in=readable_workspaces(self.request.user).values("id"))
        health = self.request.query_params.get("health") if hasattr(self.request, "query_params") else None
        if health is not None:
            if health not in Health.values:
                raise ValidationError({"health": f"one of {', '.join(Health.values)}"})
            workspaces = workspaces.filter(health=health)
        return workspaces

    @extend_schema(parameters=[OpenApiParameter("health", str, enum=Health.values,
                                                description="only the workspaces of this health (drift checks)")])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        user = self.request.user
        if not can_create_workspace(user):
            raise Forbidden("only site admins and teams allowed to create workspaces can create one")
        pool = serializer.validated_data.get("pool") or workspace_default_pool(user)
        if not can_use_pool(user, pool):
            raise Forbidden(f"none of your teams may use pool '{pool.name}'")
        team = None if is_site_admin(user) else creating_team(user)
        with transaction.atomic():
            ws: Workspace = serializer.save(pool=pool)
            if team is not None:
                # The team that created it administers it (as in HCP Terraform).
                WorkspaceAccess.objects.create(workspace=ws, team=team, level=AccessLevel.ADMIN)
            audit_record(actor=user, action="workspace.create", obj=ws, data={"name": ws.name})


class WorkspaceDetail(generics.RetrieveUpdateDestroyAPIView):
    serializer_class = WorkspaceSerializer
    parser_classes = JSON_ONLY
    http_method_names = ["get", "patch", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[Workspace]:
        return _workspace_queryset().filter(id__in=readable_workspaces(self.request.user).values("id"))

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        # Who may change what, the lock's audit and the unlock's queue start: the service's rules.
        serializer.instance = workspace_update(workspace=serializer.instance, actor=self.request.user,
                                               changes=dict(serializer.validated_data))

    def perform_destroy(self, instance: Workspace) -> None:
        require(self.request.user, Action.DELETE, instance)
        force = self.request.query_params.get("force") in ("1", "true")
        if state_tracks_resources(instance.id) and not (force and is_site_admin(self.request.user)):
            raise Conflict(
                f"workspace '{instance.name}' still tracks resources in its latest state: destroy them first "
                "(or a site admin deletes it anyway with ?force=true)"
            )
        with transaction.atomic():
            ws = Workspace.objects.select_for_update(no_key=True).get(id=instance.id)
            # Deleting under a running apply would orphan the agent's work and the state it writes.
            active = Task.objects.filter(workspace=ws).exclude(status__in=list(FINAL)).values_list("id", flat=True)
            if active:
                ids = ", ".join(str(i) for i in active)
                raise Conflict(f"workspace '{ws.name}' has active runs ({ids}): cancel or discard them first")
            audit_record(actor=self.request.user, action="workspace.delete", obj=ws, data={"name": ws.name})
            ws.delete()


# Configuration versions ---------------------------------------------------------------------


class _ArchiveParser(BaseParser):
    """Hands the raw request body to the view; the configs service validates it. Reads at most
    one byte past the limit: enough for the service to refuse an oversize archive."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> bytes:
        return stream.read(settings.IAC_MAX_CONFIG_BYTES + 1)


# DRF matches one media type per parser class, hence one small class per accepted type.
class GzipParser(_ArchiveParser):
    media_type = "application/gzip"


class XGzipParser(_ArchiveParser):
    media_type = "application/x-gzip"


class XTarParser(_ArchiveParser):
    media_type = "application/x-tar"


class OctetStreamParser(_ArchiveParser):
    media_type = "application/octet-stream"


ARCHIVE_PARSERS = [GzipParser, XGzipParser, XTarParser, OctetStreamParser]
ARCHIVE_MEDIA_TYPES = {p.media_type for p in ARCHIVE_PARSERS}


class ConfigurationVersionListCreate(generics.ListCreateAPIView):
    serializer_class = ConfigurationVersionSerializer
    parser_classes = [JSONParser, *ARCHIVE_PARSERS]

    def get_queryset(self) -> QuerySet[ConfigurationVersion]:
        workspace = _workspace(self.request, self.kwargs["workspace_id"], Action.READ)
        # The archive bytes stay in the database: the list shows what was uploaded, not the files.
        return ConfigurationVersion.objects.filter(workspace=workspace).defer("archive").order_by("-id")

    pagination_class = NewestFirst

    @extend_schema(
        request={
            "application/json": ConfigurationFilesSerializer,
            **{media_type: OpenApiTypes.BINARY for media_type in sorted(ARCHIVE_MEDIA_TYPES)},
        },
        responses={201: ConfigurationVersionSerializer},
        description="Upload Terraform files: a .tar.gz body, or JSON {\"files\": {\"main.tf\": \"...\"}}.",
    )
    def post(self, request: Request, workspace_id: int) -> Response:
        workspace = _workspace(request, workspace_id, Action.UPLOAD_CONFIGURATION)
        data = request.data
        if isinstance(data, bytes):
            cv = configuration_create_from_archive(workspace=workspace, data=data, actor=request.user)
        elif request.content_type.split(";")[0].strip() in ARCHIVE_MEDIA_TYPES:
            # DRF skips the parser for an empty body and gives `{}`: say what is actually wrong.
            raise ValidationError({"archive": "the request body is empty: send a .tar.gz"})
        else:
            files = ConfigurationFilesSerializer(data=data)
            files.is_valid(raise_exception=True)
            cv = configuration_create_from_files(
                workspace=workspace, files=files.validated_data["files"], actor=request.user
            )
        audit_record(actor=request.user, action="configuration.upload", obj=workspace,
                     data={"configuration_version": cv.id, "sha256": cv.sha256})
        return Response(ConfigurationVersionSerializer(cv).data, status=status.HTTP_201_CREATED)


# Variables ----------------------------------------------------------------------------------


class VariableListCreate(generics.ListCreateAPIView):
    serializer_class = VariableSerializer
    parser_classes = JSON_ONLY

    def _workspace(self) -> Workspace:
        action = Action.READ_VARIABLES if self.request.method in SAFE_METHODS else Action.EDIT_VARIABLES
        return _workspace(self.request, self.kwargs["workspace_id"], action)

    def get_queryset(self) -> QuerySet[Variable]:
        return Variable.objects.filter(workspace=self._workspace()).order_by("category", "key", "id")

    def get_serializer_context(self) -> dict[str, Any]:
        context = super().get_serializer_context()
        if "workspace_id" in self.kwargs:  # absent while drf-spectacular inspects the view
            context["workspace"] = self._workspace()
        return context

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        serializer.instance = variable_create(workspace=serializer.context["workspace"], actor=self.request.user,
                                              **serializer.validated_data)


class VariableDetail(generics.RetrieveUpdateDestroyAPIView):
    serializer_class = VariableSerializer
    parser_classes = JSON_ONLY
    http_method_names = ["get", "patch", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[Variable]:
        readable = readable_workspaces(self.request.user).values("id")
        return Variable.objects.select_related("workspace").filter(workspace_id__in=readable)

    def get_object(self) -> Variable:
        var: Variable = super().get_object()
        if self.request.method not in SAFE_METHODS:
            require(self.request.user, Action.EDIT_VARIABLES, var.workspace)
        return var

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        serializer.instance = variable_update(variable=serializer.instance, actor=self.request.user,
                                              changes=serializer.validated_data)

    def perform_destroy(self, instance: Variable) -> None:
        variable_delete(variable=instance, actor=self.request.user)


# Runs ---------------------------------------------------------------------------------------


class RunListCreate(generics.ListAPIView):
    serializer_class = RunSerializer
    parser_classes = JSON_ONLY
    pagination_class = NewestFirst

    def get_queryset(self) -> QuerySet[Task]:
        workspace = _workspace(self.request, self.kwargs["workspace_id"], Action.READ)
        runs = _run_queryset().filter(workspace=workspace).order_by("-id")
        if "workspace_id" not in self.kwargs:  # drf-spectacular inspecting the view
            return runs
        query = RunListQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        if query.validated_data.get("status"):
            runs = runs.filter(status__in=sorted(query.validated_data["status"]))
        if query.validated_data["needs_attention"]:
            runs = runs.filter(status=RunStatus.APPLY_PENDING)
        return runs

    @extend_schema(parameters=[RunListQuerySerializer])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=RunCreateSerializer,
        responses={201: RunSerializer, 409: OpenApiResponse(description="the workspace has no configuration")},
    )
    def post(self, request: Request, workspace_id: int) -> Response:
        workspace = _workspace(request, workspace_id, Action.READ)
        params = RunCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        operation = params.validated_data["operation"]
        require(request.user, Action.QUEUE_PLAN if operation == Operation.PLAN else Action.QUEUE_APPLY, workspace)
        task = run_create(
            workspace=workspace,
            operation=params.validated_data["operation"],
            actor=request.user,
            mode=params.validated_data["mode"],
            targets=params.validated_data["targets"],
            replace=params.validated_data["replace"],
        )
        return _run_response(request, task.id, status.HTTP_201_CREATED)


def _status_reached(request: HttpRequest, first: dict, data: dict) -> bool:
    until = request.GET.getlist("until")
    return data["status"] in until if until else data["status"] != first["status"]


def _status_may_answer(request: HttpRequest, first: dict, status: str) -> bool:
    """Can a change to `status` answer the long-poll (see _status_reached)?"""
    until = request.GET.getlist("until")
    return status in until if until else status != first["status"]


def _log_ready(request: HttpRequest, first: dict, data: dict) -> bool:
    return bool(data["text"]) or data["complete"] or data.get("status") in request.GET.getlist("until")


class RunDetail(generics.RetrieveAPIView):
    serializer_class = RunSerializer

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Any:
        # `?wait=` long-polls asynchronously, holding no thread or connection (tasks_app/longpoll.py).
        # Only a status change can answer it: a log append (many per second) wakes nothing.
        # A status change carries the new status: one that cannot answer runs no check.
        # While it waits, a check reads the run's status only (`long_poll_probe`); the answer is
        # the whole run.
        return long_polling(super().as_view(**initkwargs), bound=RUN_WAIT_MAX_SECONDS, ready=_status_reached,
                            wake_on=frozenset({"status"}), may_answer=_status_may_answer, probe=True)

    def _probing(self) -> bool:
        return bool(getattr(self.request, "long_poll_probe", False))

    def get_queryset(self) -> QuerySet[Task]:
        readable = readable_workspaces(self.request.user).values("id")
        if self._probing():
            return Task.objects.only("id", "status", "workspace_id").filter(workspace_id__in=readable)
        return _run_queryset().filter(workspace_id__in=readable)

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if self._probing():  # a long-poll's check while it waits: what _status_reached reads
            task = self.get_object()
            return Response({"id": task.id, "status": task.status})
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        parameters=[RunWaitQuerySerializer],
        description="The run. With `?wait=S`: answers once the run is in one of `until` (without `until`: once "
                    "its status changes), or after S seconds (at most 60) with the run as it is then.",
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        RunWaitQuerySerializer(data=request.query_params).is_valid(raise_exception=True)
        return super().get(request, *args, **kwargs)


class _RunAction(generics.GenericAPIView):
    """Base for POST /runs/<id>/<action>/: 404 for an unknown run, then the service decides."""

    serializer_class = RunSerializer
    parser_classes = JSON_ONLY
    queryset = Task.objects.all()
    action_required = Action.READ

    def _task_id(self, action: Action | None = None) -> int:
        return _task(self.request, self.kwargs["pk"], action or self.action_required).id


class RunConfirm(_RunAction):
    action_required = Action.CONFIRM
    @extend_schema(
        request=RunConfirmSerializer,
        responses={
            200: RunSerializer,
            409: OpenApiResponse(description="not apply_pending, or a stale plan (the run is then discarded)"),
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        params = RunConfirmSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        result = run_confirm(task_id=self._task_id(), actor=request.user, comment=params.validated_data["comment"])
        if result.refused:
            # The service has already committed the discard; the 409 tells the caller no apply will run.
            raise Conflict(result.refused)
        return _run_response(request, result.task.id)


class RunDiscard(_RunAction):
    action_required = Action.DISCARD
    @extend_schema(
        request=RunConfirmSerializer,
        responses={200: RunSerializer, 409: OpenApiResponse(description="not apply_pending")},
    )
    def post(self, request: Request, pk: int) -> Response:
        params = RunConfirmSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        task = run_discard(task_id=self._task_id(), actor=request.user, comment=params.validated_data["comment"])
        return _run_response(request, task.id)


class RunCancel(_RunAction):
    action_required = Action.CANCEL
    @extend_schema(
        request=RunCancelSerializer,
        responses={200: RunSerializer, 409: OpenApiResponse(description="the run is already final")},
    )
    def post(self, request: Request, pk: int) -> Response:
        params = RunCancelSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        task = run_cancel(
            task_id=self._task_id(Action.FORCE_CANCEL if params.validated_data["force"] else Action.CANCEL),
            actor=request.user,
            force=params.validated_data["force"],
            comment=params.validated_data["comment"],
        )
        return _run_response(request, task.id)


class RunPrepare(_RunAction):
    action_required = Action.CONFIRM  # opening the Confirm dialog
    @extend_schema(
        request=None,
        responses={200: RunSerializer},
        description="The Confirm dialog was opened: queue a warmup if the run has no warm dir.",
    )
    def post(self, request: Request, pk: int) -> Response:
        task = run_prepare(task_id=self._task_id())
        return _run_response(request, task.id)


class RunLogs(generics.GenericAPIView):
    serializer_class = RunLogSerializer
    queryset = Task.objects.all()

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Any:
        # `?wait=` follows the log asynchronously, holding no thread or connection (tasks_app/longpoll.py).
        # New text, or the run's end (a status change) with no more to come.
        return long_polling(super().as_view(**initkwargs), bound=RUN_WAIT_MAX_SECONDS, ready=_log_ready,
                            wake_on=frozenset({"status", "log"}))

    @extend_schema(
        parameters=[RunLogQuerySerializer],
        description="At most 1 MiB of the log per call: read on from `next_offset` until `complete`. With "
                    "`?wait=S` it follows: when there is nothing past `offset` yet, it answers once there is, "
                    "once the run has ended, or after S seconds (at most 60) with an empty `text`.",
    )
    def get(self, request: Request, pk: int) -> Response:
        task = _task(request, pk, Action.READ)
        query = RunLogQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        # The status is read BEFORE the log: a run that was final then has all of its log
        # written, so `complete` never hides a chunk appended between the two reads. One call
        # returns at most LOG_PAGE_BYTES: `complete` also needs the page to reach the end.
        text, next_offset = run_log_read(
            task_id=task.id, offset=query.validated_data["offset"], limit=LOG_PAGE_BYTES
        )
        complete = is_final(task.status) and next_offset >= task.log_size
        if task.log_pruned_at is not None:  # retention deleted it: say so, not an empty log
            text, next_offset, complete = log_pruned_note(task) or "", 0, True
        return Response(RunLogSerializer({"text": text, "next_offset": next_offset, "complete": complete,
                                          "status": task.status}).data)


# State versions -----------------------------------------------------------------------------


class StateVersionList(generics.ListAPIView):
    serializer_class = StateVersionSerializer
    pagination_class = StateVersionsNewestFirst

    def get_queryset(self) -> QuerySet[StateVersion]:
        workspace = _workspace(self.request, self.kwargs["workspace_id"], Action.READ)
        return StateVersion.objects.filter(workspace=workspace).defer("encrypted_data").order_by("-serial", "-id")

    def get_serializer_context(self) -> dict[str, Any]:
        context = super().get_serializer_context()
        if "workspace_id" in self.kwargs:  # (not while drf-spectacular inspects the view)
            workspace = _workspace(self.request, self.kwargs["workspace_id"], Action.READ)
            context["masked"] = masked_values_for(self.request.user, workspace)
        return context


class WorkspaceOutputs(generics.GenericAPIView):
    """The outputs of the workspace's latest state, sensitive ones masked (value null). For a
    caller who may not read the raw state, the workspace's sensitive variable values are
    masked in every value too, whatever the configuration declares."""

    serializer_class = OutputSerializer
    queryset = Workspace.objects.none()
    pagination_class = None

    @extend_schema(responses={200: OutputSerializer(many=True)})
    def get(self, request: Request, workspace_id: int) -> Response:
        workspace = _workspace(request, workspace_id, Action.READ)
        outputs = state_outputs(workspace.id, masked=masked_values_for(request.user, workspace))
        return Response(OutputSerializer(outputs, many=True).data)
