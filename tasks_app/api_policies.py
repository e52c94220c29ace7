"""REST API for policies: policy sets (site admins only) and a run's policy override
(`admin` on the run's workspace). The rules live in tasks_app.services.policies and runs."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from iacplatform.errors import Forbidden, Invalid, NotFound
from iacplatform.permissions import Action, is_site_admin, run_for
from tasks_app.api import _run_response
from tasks_app.models import PolicySet
from tasks_app.serializers import RunSerializer
from tasks_app.services.policies import policy_set_create, policy_set_delete, policy_set_update
from tasks_app.services.runs import run_policy_override
from tasks_app.states import EnforcementLevel
from tasks_app.vcs.policy_sync import policy_set_sync, repository_values


class PolicySerializer(serializers.Serializer):
    name = serializers.CharField()
    enforcement_level = serializers.CharField()
    package = serializers.CharField(read_only=True)
    module = serializers.CharField()


class PolicySetRepositorySerializer(serializers.Serializer):
    """Where a set's policies come from, and how its last sync went."""

    connection = serializers.CharField(source="vcs_connection.name")
    repository = serializers.CharField(source="vcs_repository")
    branch = serializers.CharField(source="vcs_branch")
    directory = serializers.CharField(source="vcs_directory")
    sha = serializers.CharField(source="vcs_sha", help_text="the commit whose policies the set holds")
    synced_at = serializers.DateTimeField(source="vcs_synced_at", allow_null=True)
    sync_error = serializers.CharField(source="vcs_sync_error",
                                       help_text="why the last sync failed (the set kept its policies); empty")
    error_sha = serializers.CharField(source="vcs_error_sha")


class PolicySetSerializer(serializers.ModelSerializer):
    policies = PolicySerializer(many=True, read_only=True)
    workspaces = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    # JSON's `global` (a Python keyword on the model: is_global).
    global_ = serializers.BooleanField(source="is_global", read_only=True)
    repository = serializers.SerializerMethodField()

    class Meta:
        model = PolicySet
        fields = ["id", "name", "description", "global_", "workspaces", "source", "repository", "policies",
                  "created_at", "updated_at"]
        read_only_fields = fields

    @extend_schema_field(PolicySetRepositorySerializer(allow_null=True))
    def get_repository(self, instance: PolicySet) -> dict[str, Any] | None:
        return PolicySetRepositorySerializer(instance).data if instance.source == "vcs" else None

    def to_representation(self, instance: PolicySet) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["global"] = data.pop("global_")
        return data


class PolicyRequestSerializer(serializers.Serializer):
    name = serializers.RegexField(r"^[A-Za-z0-9_-]{1,100}$")
    enforcement_level = serializers.ChoiceField(choices=EnforcementLevel.choices, default=EnforcementLevel.ADVISORY)
    module = serializers.CharField(help_text="the Rego module (OPA v1 syntax), with its `package` line")


class RepositoryRequestSerializer(serializers.Serializer):
    connection = serializers.CharField(help_text="a VCS connection's name")
    repository = serializers.CharField(required=False, help_text="owner/name on a forge; a path on plain git")
    branch = serializers.CharField(required=False, help_text="default main")
    directory = serializers.CharField(required=False, help_text="the directory holding the policies; default the root")


class PolicySetRequestSerializer(serializers.Serializer):
    """What a POST (all of it, `name` and `policies` required) or a PATCH (any of it) sends;
    other fields are ignored, as everywhere in the API."""

    name = serializers.RegexField(r"^[A-Za-z0-9_-]{1,100}$")
    description = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    global_ = serializers.BooleanField(required=False, help_text="govern every workspace")
    workspaces = serializers.ListField(child=serializers.IntegerField(min_value=1), required=False)
    policies = PolicyRequestSerializer(many=True, required=False,
                                       help_text="required unless the set follows a repository")
    repository = RepositoryRequestSerializer(
        required=False, allow_null=True,
        help_text="follow a directory of a repository's branch (its *.rego files, levels from policies.hcl); "
                  "null: back to uploaded policies, keeping the current ones")

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        fields["global"] = fields.pop("global_")
        return fields


FIELDS = ("name", "description", "global", "workspaces", "policies", "repository")


def _site_admin(request: Request) -> None:
    if not is_site_admin(request.user):
        raise Forbidden("only site admins manage policy sets")


def _body(request: Request) -> dict[str, Any]:
    """The known fields of the body (others are ignored, as DRF's serializers ignore them)."""
    if not isinstance(request.data, dict):
        raise Invalid("the body must be a JSON object")
    return {k: v for k, v in request.data.items() if k in FIELDS}


def _answer(policy_set_id: int, code: int = status.HTTP_200_OK) -> Response:
    ps = PolicySet.objects.prefetch_related("policies", "workspaces").get(id=policy_set_id)
    return Response(PolicySetSerializer(ps).data, status=code)


class PolicySetListCreate(APIView):
    parser_classes = [JSONParser]

    @extend_schema(responses={200: PolicySetSerializer(many=True)})
    def get(self, request: Request) -> Response:
        _site_admin(request)
        sets = PolicySet.objects.prefetch_related("policies", "workspaces").order_by("name")
        return Response(PolicySetSerializer(sets, many=True).data)

    @extend_schema(
        request=PolicySetRequestSerializer,
        responses={201: PolicySetSerializer},
        description='{"name", "description", "global", "workspaces": [ids], "policies": [{"name", '
                    '"enforcement_level": advisory | soft-mandatory | hard-mandatory, "module": Rego text}]}',
    )
    def post(self, request: Request) -> Response:
        _site_admin(request)
        body = _body(request)
        repository = repository_values(body["repository"]) if body.get("repository") is not None else None
        ps = policy_set_create(actor=request.user, name=body.get("name"), policies=body.get("policies"),
                               description=body.get("description", ""), is_global=body.get("global", False),
                               workspaces=body.get("workspaces", []), repository=repository)
        if repository is not None:
            policy_set_sync(policy_set_id=ps.id, actor=request.user)
        return _answer(ps.id, status.HTTP_201_CREATED)


class PolicySetDetail(APIView):
    parser_classes = [JSONParser]

    @extend_schema(responses={200: PolicySetSerializer})
    def get(self, request: Request, pk: int) -> Response:
        _site_admin(request)
        if not PolicySet.objects.filter(id=pk).exists():
            raise NotFound(f"no policy set {pk}")
        return _answer(pk)

    @extend_schema(request=PolicySetRequestSerializer(partial=True), responses={200: PolicySetSerializer})
    def patch(self, request: Request, pk: int) -> Response:
        _site_admin(request)
        changes = dict(_body(request))
        if changes.get("repository") is not None:
            changes["repository"] = repository_values(changes["repository"])
        ps = policy_set_update(actor=request.user, policy_set_id=pk, changes=changes)
        if changes.get("repository") is not None:
            policy_set_sync(policy_set_id=ps.id, actor=request.user)
        return _answer(ps.id)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request: Request, pk: int) -> Response:
        _site_admin(request)
        policy_set_delete(actor=request.user, policy_set_id=pk)
        return Response(status=status.HTTP_204_NO_CONTENT)


class PolicySetSync(APIView):
    @extend_schema(
        request=None,
        responses={200: PolicySetSerializer, 409: OpenApiResponse(description="the set does not follow a repository")},
        description="Sync a set that follows a repository from its branch's head now (site admins). The answer "
                    "is the set: its new policies and commit, or its kept policies and `repository.sync_error`.",
    )
    def post(self, request: Request, pk: int) -> Response:
        _site_admin(request)
        ps = policy_set_sync(policy_set_id=pk, actor=request.user)
        return _answer(ps.id)


class RunOverrideSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000)


class RunPolicyOverride(APIView):
    parser_classes = [JSONParser]

    @extend_schema(
        request=RunOverrideSerializer,
        responses={200: RunSerializer, 409: OpenApiResponse(description="no soft-failed policy check to override")},
        description="Override a soft-failed policy check (admin on the workspace), with a reason; audited.",
    )
    def post(self, request: Request, pk: int) -> Response:
        task = run_for(request.user, Action.READ, pk)  # 404 for a run the caller cannot read
        if not isinstance(request.data, dict):
            raise Invalid("the body must be a JSON object")
        reason = request.data.get("reason", "")
        if not isinstance(reason, str):
            raise Invalid(fields={"reason": ["a string"]})
        run_policy_override(task_id=task.id, actor=request.user, reason=reason)
        return _run_response(request, task.id)
