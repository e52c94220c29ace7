"""VCS edges: the webhook endpoint (`POST /webhooks/<connection>/`, unauthenticated, proved
by the forge's signature) and the REST API's connections and workspace repository settings.
They parse, call tasks_app/vcs services, and answer."""

from __future__ import annotations

import logging
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from iacplatform.celery import app as celery_app
from iacplatform.errors import Forbidden, NotFound, PlatformError
from iacplatform.permissions import Action, is_site_admin, workspace_for
from tasks_app.api import JSON_ONLY
from tasks_app.models import Workspace
from tasks_app.serializers import StrictBooleanField, StrictCharField, StrictChoiceField
from tasks_app.vcs.connections import (
    auth_kind,
    vcs_connection_create,
    vcs_connection_update,
    workspace_follow_repository,
)
from tasks_app.vcs.models import HeldPullRequest, VcsConnection, VcsKind
from tasks_app.vcs.webhooks import delivery_receive, held_allow

log = logging.getLogger(__name__)


@csrf_exempt
@require_POST
def webhook(request: HttpRequest, connection: str) -> JsonResponse:
    """Stored first, answered at once, processed after (by the worker)."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        received = delivery_receive(connection_name=connection, headers=headers, body=request.body)
    except PlatformError as exc:
        return JsonResponse({"detail": str(exc)}, status=exc.status)
    if received.delivery is None:
        return JsonResponse({"detail": received.note}, status=202)
    if received.duplicate:
        return JsonResponse({"detail": "delivery received before: processed once", "delivery": received.delivery.id},
                            status=200)
    try:
        # Straight to the broker, no retries: the answer must not wait on Redis (the tick has it).
        celery_app.send_task("tasks_app.tasks.vcs_delivery_process", args=[received.delivery.id], retry=False)
    except Exception:  # noqa: BLE001 - Redis away: the VCS tick processes stored deliveries
        log.warning("could not enqueue delivery %s; the VCS tick will process it", received.delivery.id,
                    exc_info=True)
    return JsonResponse({"detail": "stored", "delivery": received.delivery.id}, status=202)


def connection_json(c: VcsConnection) -> dict[str, Any]:
    # The credential and the webhook secret are never shown again: only whether they are set.
    return {"id": c.id, "name": c.name, "kind": c.kind, "url": c.url, "api_url": c.api_url,
            "has_token": c.encrypted_token is not None, "has_ssh_key": c.encrypted_ssh_key is not None,
            "has_webhook_secret": c.encrypted_webhook_secret is not None, "auth": auth_kind(c),
            "app_id": c.github_app_id or None, "app_installation_id": c.github_app_installation_id,
            "has_app_private_key": c.encrypted_github_app_private_key is not None, "webhook_path": f"/webhooks/{c.name}/",
            "poll_interval_seconds": c.poll_interval_seconds, "trusted_authors": c.trusted_authors,
            "refused_deliveries": c.refused_deliveries, "created_at": c.created_at}


class ConnectionCreateSerializer(serializers.Serializer):
    name = StrictCharField(max_length=100, help_text="lowercase letters, digits, '-' or '_'")
    kind = StrictChoiceField(choices=VcsKind.choices)
    url = StrictCharField(max_length=500, help_text="https or ssh: where repositories are fetched from")
    api_url = StrictCharField(max_length=500, required=False, default="", allow_blank=True)
    token = StrictCharField(max_length=2000, required=False, default="", allow_blank=True, trim_whitespace=False)
    ssh_key = StrictCharField(max_length=20000, required=False, default="", allow_blank=True, trim_whitespace=False)
    webhook_secret = StrictCharField(max_length=200, required=False, default="", allow_blank=True)
    poll_interval_seconds = serializers.IntegerField(required=False, default=0, min_value=0, max_value=86400)
    trusted_authors = serializers.ListField(child=StrictCharField(max_length=100), required=False, default=list,
                                            max_length=1000)
    app_id = StrictCharField(max_length=100, required=False, default="", allow_blank=True,
                             help_text="GitHub App: its id (or client id), from the App's settings page")
    app_private_key = StrictCharField(max_length=20000, required=False, default="", allow_blank=True,
                                      trim_whitespace=False,
                                      help_text="GitHub App: its private key (PEM); write-only, never shown again")
    app_installation_id = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1,
                                                   max_value=2**63 - 1,
                                                   help_text="GitHub App: the installation's id")


class ConnectionUpdateSerializer(serializers.Serializer):
    token = StrictCharField(max_length=2000, required=False, allow_blank=True, trim_whitespace=False,
                            help_text="replaces the GitHub App's credentials when given")
    ssh_key = StrictCharField(max_length=20000, required=False, allow_blank=True, trim_whitespace=False)
    app_id = StrictCharField(max_length=100, required=False, allow_blank=True)
    app_private_key = StrictCharField(max_length=20000, required=False, allow_blank=True, trim_whitespace=False,
                                      help_text="write-only; omitted: the stored key is kept")
    app_installation_id = serializers.IntegerField(required=False, min_value=1, max_value=2**63 - 1)
    trusted_authors = serializers.ListField(child=StrictCharField(max_length=100), required=False, max_length=1000)


OBJECT = {"type": "object", "additionalProperties": True}
LIST = {"type": "array", "items": OBJECT}


class ConnectionList(APIView):
    """Site admins only: list, or create (the answer carries the webhook secret, once)."""

    parser_classes = JSON_ONLY

    @extend_schema(responses={200: LIST})
    def get(self, request: Request) -> Response:
        if not is_site_admin(request.user):
            raise Forbidden("only site admins manage VCS connections")
        return Response([connection_json(c) for c in VcsConnection.objects.all()])

    @extend_schema(request=ConnectionCreateSerializer, responses={201: OBJECT})
    def post(self, request: Request) -> Response:
        if not is_site_admin(request.user):
            raise Forbidden("only site admins manage VCS connections")
        data = ConnectionCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        connection, secret = vcs_connection_create(actor=request.user, **data.validated_data)
        return Response({**connection_json(connection), "webhook_secret": secret}, status=201)


class ConnectionDetail(APIView):
    """Site admins only: `GET` one connection; `PATCH` its credential (a token, a deploy key,
    or a GitHub App's id, key and installation id) or its trusted authors."""

    parser_classes = JSON_ONLY

    @extend_schema(operation_id="v1_vcs_connections_read", responses={200: OBJECT})
    def get(self, request: Request, connection_id: int) -> Response:
        if not is_site_admin(request.user):
            raise Forbidden("only site admins manage VCS connections")
        connection = VcsConnection.objects.filter(id=connection_id).first()
        if connection is None:
            raise NotFound(f"no VCS connection {connection_id}")
        return Response(connection_json(connection))

    @extend_schema(request=ConnectionUpdateSerializer, responses={200: OBJECT})
    def patch(self, request: Request, connection_id: int) -> Response:
        if not is_site_admin(request.user):
            raise Forbidden("only site admins manage VCS connections")
        data = ConnectionUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        connection = vcs_connection_update(actor=request.user, connection_id=connection_id, **data.validated_data)
        return Response(connection_json(connection))


class FollowSerializer(serializers.Serializer):
    connection = StrictCharField(max_length=100, allow_null=True, help_text="null: follow nothing")
    repository = StrictCharField(max_length=300, required=False, default="", allow_blank=True)
    branch = StrictCharField(max_length=250, required=False, default="", allow_blank=True)
    working_directory = StrictCharField(max_length=300, required=False, default="", allow_blank=True)
    trigger_patterns = serializers.ListField(child=StrictCharField(max_length=300), required=False, default=list,
                                             max_length=100)
    tag_regex = StrictCharField(max_length=200, required=False, default="", allow_blank=True)
    keep_pending_runs = StrictBooleanField(required=False, default=False)


def workspace_vcs_json(ws: Workspace) -> dict[str, Any] | None:
    if ws.vcs_connection_id is None:
        return None
    return {"connection": ws.vcs_connection.name, "repository": ws.vcs_repository, "branch": ws.vcs_branch,
            "working_directory": ws.vcs_working_directory, "trigger_patterns": ws.vcs_trigger_patterns,
            "tag_regex": ws.vcs_tag_regex, "keep_pending_runs": ws.vcs_keep_pending_runs,
            "last_commit": ws.vcs_last_sha or None}


class WorkspaceVcs(APIView):
    """`GET` what the workspace follows; `PUT` it (`admin`): {"connection": null} stops."""

    parser_classes = JSON_ONLY

    @extend_schema(responses={200: OBJECT})
    def get(self, request: Request, workspace_id: int) -> Response:
        ws = workspace_for(request.user, Action.READ, workspace_id)
        return Response({"vcs": workspace_vcs_json(ws)})

    @extend_schema(request=FollowSerializer, responses={200: OBJECT})
    def put(self, request: Request, workspace_id: int) -> Response:
        ws = workspace_for(request.user, Action.READ, workspace_id)
        data = FollowSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        ws = workspace_follow_repository(workspace=ws, actor=request.user, **data.validated_data)
        return Response({"vcs": workspace_vcs_json(ws)})


class HeldAllowSerializer(serializers.Serializer):
    sha = serializers.RegexField(r"^[0-9a-f]{40}([0-9a-f]{24})?$", help_text="the held commit's id")


class HeldAllow(APIView):
    """`GET` the held pull request commits; `POST {"sha": ...}` plans one (`write`)."""

    parser_classes = JSON_ONLY

    @extend_schema(responses={200: LIST})
    def get(self, request: Request, workspace_id: int) -> Response:
        ws = workspace_for(request.user, Action.READ, workspace_id)
        return Response([{"sha": h.sha, "pull_request": h.number, "reason": h.reason, "run": h.allowed_run_id,
                          "created_at": h.created_at} for h in HeldPullRequest.objects.filter(workspace=ws)])

    @extend_schema(request=HeldAllowSerializer, responses={201: OBJECT})
    def post(self, request: Request, workspace_id: int) -> Response:
        ws = workspace_for(request.user, Action.QUEUE_APPLY, workspace_id)
        data = HeldAllowSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        task = held_allow(workspace=ws, sha=data.validated_data["sha"], actor=request.user)
        return Response({"run": task.id}, status=201)
