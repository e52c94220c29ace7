"""The REST API of the workflows across workspaces: variable sets, run triggers and
notification destinations. Thin views: they parse, call the services of tasks_app/workflows/
(which check who may do what and audit), and render."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group
from django.core.validators import RegexValidator
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import generics, serializers
from rest_framework.parsers import JSONParser
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from iacplatform.errors import NotFound
from iacplatform.permissions import Action, workspace_for
from tasks_app.models import Task, Workspace
from tasks_app.serializers import (
    RunSerializer,
    StrictCharField,
    StrictChoiceField,
    StrictModelSerializer,
    VariableValueField,
    identifier,
)
from tasks_app.workflows.drift import drift_check_queue
from tasks_app.workflows.models import (
    NotificationAttempt,
    NotificationDelivery,
    NotificationDestination,
    VariableSet,
    VariableSetVariable,
)
from tasks_app.workflows.notifications import (
    SUBSCRIBABLE,
    notification_destination_create,
    notification_destination_delete,
    notification_destination_test,
    notification_destination_update,
)
from tasks_app.workflows.run_triggers import run_trigger_add, run_trigger_remove
from tasks_app.workflows.set_reads import sets_applying
from tasks_app.workflows.states import NotificationKind, VariableSetScope
from tasks_app.workflows.variable_sets import (
    set_variable_create,
    set_variable_delete,
    set_variable_update,
    variable_set_attach,
    variable_set_create,
    variable_set_delete,
    variable_set_detach,
    variable_set_for,
    variable_set_update,
    variable_sets_visible,
)

JSON_ONLY = [JSONParser]


# Variable sets ------------------------------------------------------------------------------


@extend_schema_field({"type": "string", "nullable": True, "maxLength": 150, "pattern": "^[^\\u0000-\\u001f]*$",
                      "description": "the owning team (its name); none: the site admins'"})
class TeamField(StrictCharField):
    """A team by its name: checked as text before any query (no NUL reaches the database)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_length=150, **kwargs)
        self.validators.append(RegexValidator(r"^[^\x00-\x1f]*\Z", "must not hold control characters"))

    def to_representation(self, value: Group) -> str:
        return value.name

    def run_validation(self, data: Any = serializers.empty) -> Group | None:
        name = super().run_validation(data)
        if name is None:
            return None
        team = Group.objects.filter(name=name).first()
        if team is None:
            raise serializers.ValidationError(f"no such team: '{name}'")
        return team


class VariableSetSerializer(StrictModelSerializer):
    team = TeamField(required=False, allow_null=True)
    scope = StrictChoiceField(choices=VariableSetScope.choices, default=VariableSetScope.WORKSPACES)
    workspaces = serializers.SerializerMethodField()

    class Meta:
        model = VariableSet
        fields = ["id", "name", "description", "scope", "priority", "team", "workspaces", "created_at"]
        read_only_fields = ["id", "workspaces", "created_at"]
        validators: list = []  # the service answers a taken name
        extra_kwargs = {"name": {"validators": []}}

    def get_workspaces(self, obj: VariableSet) -> list[int]:
        return sorted(obj.workspaces.values_list("id", flat=True))


class SetVariableSerializer(StrictModelSerializer):
    value = VariableValueField(allow_blank=True, trim_whitespace=False)

    class Meta:
        model = VariableSetVariable
        fields = ["id", "key", "value", "category", "sensitive"]
        read_only_fields = ["id"]
        validators: list = []
        extra_kwargs = {"key": {"validators": [identifier]}}


class VariableSetListCreate(generics.ListCreateAPIView):
    serializer_class = VariableSetSerializer
    parser_classes = JSON_ONLY

    def get_queryset(self) -> QuerySet[VariableSet]:
        return variable_sets_visible(self.request.user).select_related("team").order_by("name")

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        serializer.instance = variable_set_create(actor=self.request.user, **serializer.validated_data)


class VariableSetDetail(generics.RetrieveUpdateDestroyAPIView):
    serializer_class = VariableSetSerializer
    parser_classes = JSON_ONLY
    http_method_names = ["get", "patch", "delete", "head", "options"]

    def get_object(self) -> VariableSet:
        return variable_set_for(self.request.user, self.kwargs["pk"])

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        changes = dict(serializer.validated_data)
        if "team" in changes:
            raise serializers.ValidationError({"team": "a set's team is chosen when it is created"})
        serializer.instance = variable_set_update(variable_set=serializer.instance, actor=self.request.user,
                                                  changes=changes)

    def perform_destroy(self, instance: VariableSet) -> None:
        variable_set_delete(variable_set=instance, actor=self.request.user)


class SetVariableListCreate(generics.ListCreateAPIView):
    serializer_class = SetVariableSerializer
    parser_classes = JSON_ONLY

    def _set(self) -> VariableSet:
        return variable_set_for(self.request.user, self.kwargs["set_id"])

    def get_queryset(self) -> QuerySet[VariableSetVariable]:
        if "set_id" not in self.kwargs:  # drf-spectacular inspecting the view
            return VariableSetVariable.objects.none()
        return self._set().variables.order_by("category", "key", "id")

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        serializer.instance = set_variable_create(variable_set=self._set(), actor=self.request.user,
                                                  **serializer.validated_data)


class SetVariableDetail(generics.RetrieveUpdateDestroyAPIView):
    serializer_class = SetVariableSerializer
    parser_classes = JSON_ONLY
    http_method_names = ["get", "patch", "delete", "head", "options"]

    def get_object(self) -> VariableSetVariable:
        variable_set = variable_set_for(self.request.user, self.kwargs["set_id"])
        found = variable_set.variables.select_related("variable_set__team").filter(id=self.kwargs["pk"]).first()
        if found is None:
            raise NotFound("no such variable")
        return found

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        serializer.instance = set_variable_update(variable=serializer.instance, actor=self.request.user,
                                                  changes=serializer.validated_data)

    def perform_destroy(self, instance: VariableSetVariable) -> None:
        set_variable_delete(variable=instance, actor=self.request.user)


class VariableSetWorkspace(APIView):
    """PUT attaches the set to the workspace, DELETE detaches it."""

    parser_classes = JSON_ONLY

    def _both(self, request: Request, set_id: int, workspace_id: int) -> tuple[VariableSet, Workspace]:
        variable_set = variable_set_for(request.user, set_id)
        return variable_set, workspace_for(request.user, Action.READ, workspace_id)

    @extend_schema(request=None, responses={200: VariableSetSerializer})
    def put(self, request: Request, set_id: int, workspace_id: int) -> Response:
        variable_set, workspace = self._both(request, set_id, workspace_id)
        variable_set_attach(variable_set=variable_set, workspace=workspace, actor=request.user)
        return Response(VariableSetSerializer(variable_set).data)

    @extend_schema(request=None, responses={200: VariableSetSerializer})
    def delete(self, request: Request, set_id: int, workspace_id: int) -> Response:
        variable_set, workspace = self._both(request, set_id, workspace_id)
        variable_set_detach(variable_set=variable_set, workspace=workspace, actor=request.user)
        return Response(VariableSetSerializer(variable_set).data)


class AppliedSetSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    scope = serializers.CharField()
    priority = serializers.BooleanField()
    variables = serializers.ListField(child=serializers.DictField())


class WorkspaceVariableSets(APIView):
    """The variable sets that apply to a workspace, for whoever may read its variables: names,
    keys and categories (a sensitive value never; a plain one as the workspace's are)."""

    @extend_schema(responses={200: AppliedSetSerializer(many=True)})
    def get(self, request: Request, workspace_id: int) -> Response:
        workspace = workspace_for(request.user, Action.READ_VARIABLES, workspace_id)
        data = []
        for variable_set in sets_applying(workspace.id).prefetch_related("variables"):
            data.append({"id": variable_set.id, "name": variable_set.name, "scope": variable_set.scope,
                         "priority": variable_set.priority,
                         "variables": [{"key": v.key, "category": v.category, "sensitive": v.sensitive,
                                        "value": None if v.sensitive else v.plain_value}
                                       for v in variable_set.variables.all()]})
        return Response(data)



# Run triggers -------------------------------------------------------------------------------


class RunTriggerSerializer(serializers.Serializer):
    source = serializers.IntegerField(help_text="the id of a workspace you can read")
    source_name = serializers.CharField(read_only=True)


def _sources(workspace: Workspace) -> list[dict[str, Any]]:
    return [{"source": w.id, "source_name": w.name} for w in workspace.trigger_sources.order_by("name")]


class RunTriggerListCreate(APIView):
    """The workspace's run trigger sources: an apply of one that changed its state queues a
    plan_and_apply here."""

    parser_classes = JSON_ONLY

    @extend_schema(responses={200: RunTriggerSerializer(many=True)})
    def get(self, request: Request, workspace_id: int) -> Response:
        return Response(_sources(workspace_for(request.user, Action.READ, workspace_id)))

    @extend_schema(request=RunTriggerSerializer, responses={201: RunTriggerSerializer(many=True)})
    def post(self, request: Request, workspace_id: int) -> Response:
        workspace = workspace_for(request.user, Action.SETTINGS, workspace_id)
        params = RunTriggerSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        source = workspace_for(request.user, Action.READ, params.validated_data["source"])
        run_trigger_add(workspace=workspace, source=source, actor=request.user)
        return Response(_sources(workspace), status=201)


class RunTriggerRemove(APIView):
    @extend_schema(request=None, responses={204: None})
    def delete(self, request: Request, workspace_id: int, source_id: int) -> Response:
        workspace = workspace_for(request.user, Action.SETTINGS, workspace_id)
        source = workspace.trigger_sources.filter(id=source_id).first()
        if source is None:
            raise NotFound("no such run trigger")
        run_trigger_remove(workspace=workspace, source=source, actor=request.user)
        return Response(status=204)


# Notification destinations --------------------------------------------------------------------


class AttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = NotificationAttempt
        fields = ["number", "status_code", "error", "to_status", "created_at"]
        read_only_fields = fields


class DeliverySerializer(serializers.ModelSerializer):
    attempt_log = serializers.SerializerMethodField()

    class Meta:
        model = NotificationDelivery
        fields = ["id", "trigger", "task", "status", "attempts", "next_attempt_at", "created_at", "finished_at",
                  "attempt_log"]
        read_only_fields = fields

    @extend_schema_field(AttemptSerializer(many=True))
    def get_attempt_log(self, delivery: NotificationDelivery) -> list[dict[str, Any]]:
        return AttemptSerializer(delivery.attempt_rows.all()[:5], many=True).data


class DestinationSerializer(StrictModelSerializer):
    kind = StrictChoiceField(choices=NotificationKind.choices)
    triggers = serializers.ListField(child=StrictChoiceField(choices=[(t, t) for t in SUBSCRIBABLE]),
                                     max_length=len(SUBSCRIBABLE), default=list)
    emails = serializers.ListField(child=StrictCharField(max_length=254), max_length=20, required=False, default=list)
    secret = StrictCharField(write_only=True, required=False, allow_blank=True, max_length=200, trim_whitespace=False,
                             help_text="the webhook's HMAC-SHA256 signing key (write-only)")
    has_secret = serializers.SerializerMethodField()
    recent_deliveries = serializers.SerializerMethodField()

    class Meta:
        model = NotificationDestination
        fields = ["id", "name", "kind", "url", "emails", "secret", "has_secret", "triggers", "enabled", "created_at",
                  "recent_deliveries"]
        read_only_fields = ["id", "created_at"]
        validators: list = []
        extra_kwargs = {"url": {"required": False, "allow_blank": True}}

    def get_has_secret(self, destination: NotificationDestination) -> bool:
        return bool(destination.encrypted_secret)

    @extend_schema_field(DeliverySerializer(many=True))
    def get_recent_deliveries(self, destination: NotificationDestination) -> list[dict[str, Any]]:
        recent = destination.deliveries.prefetch_related("attempt_rows").order_by("-id")[:10]
        return DeliverySerializer(recent, many=True).data


class DestinationListCreate(generics.ListCreateAPIView):
    serializer_class = DestinationSerializer
    parser_classes = JSON_ONLY

    def _workspace(self) -> Workspace:
        action = Action.READ if self.request.method in SAFE_METHODS else Action.SETTINGS
        return workspace_for(self.request.user, action, self.kwargs["workspace_id"])

    def get_queryset(self) -> QuerySet[NotificationDestination]:
        if "workspace_id" not in self.kwargs:
            return NotificationDestination.objects.none()
        return self._workspace().notification_destinations.order_by("name", "id")

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        serializer.instance = notification_destination_create(workspace=self._workspace(), actor=self.request.user,
                                                              **serializer.validated_data)


class DestinationDetail(generics.RetrieveUpdateDestroyAPIView):
    serializer_class = DestinationSerializer
    parser_classes = JSON_ONLY
    http_method_names = ["get", "patch", "delete", "head", "options"]

    def get_object(self) -> NotificationDestination:
        destination = (NotificationDestination.objects.select_related("workspace")
                       .filter(id=self.kwargs["pk"]).first())
        if destination is None:
            raise NotFound("no such notification destination")
        workspace_for(self.request.user, Action.READ, destination.workspace_id)
        return destination

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        serializer.instance = notification_destination_update(destination=serializer.instance, actor=self.request.user,
                                                              changes=serializer.validated_data)

    def perform_destroy(self, instance: NotificationDestination) -> None:
        notification_destination_delete(destination=instance, actor=self.request.user)


class DestinationTest(APIView):
    """Send a test notification (stored and delivered by the worker like any other)."""

    @extend_schema(request=None, responses={202: DeliverySerializer})
    def post(self, request: Request, pk: int) -> Response:
        destination = DestinationDetail(request=request, kwargs={"pk": pk}).get_object()
        delivery = notification_destination_test(destination=destination, actor=request.user)
        return Response(DeliverySerializer(delivery).data, status=202)


# Drift checks ---------------------------------------------------------------------------------


class DriftCheck(APIView):
    """Queue a drift check now (a refresh-only plan whose result becomes the workspace's health)."""

    @extend_schema(request=None, responses={201: RunSerializer})
    def post(self, request: Request, workspace_id: int) -> Response:
        workspace = workspace_for(request.user, Action.QUEUE_PLAN, workspace_id)
        task = drift_check_queue(workspace=workspace, actor=request.user, message=f"drift check by {request.user}")
        return Response(RunSerializer(Task.objects.get(id=task.id), context={"request": request}).data, status=201)
