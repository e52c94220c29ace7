"""VCS edges: the webhook endpoint (`POST /webhooks/<connection>/`, unauthenticated, proved
by the forge's signature) and the REST API's connections and workspace repository settings.
They parse, call tasks_app/vcs services, and answer."""

from __future__ import annotations

import logging
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from iacplatform.celery import app as celery_app
from iacplatform.errors import Forbidden, Invalid, PlatformError
from iacplatform.permissions import Action, is_site_admin, workspace_for
from tasks_app.models import Workspace
from tasks_app.vcs.connections import vcs_connection_create, workspace_follow_repository
from tasks_app.vcs.models import HeldPullRequest, VcsConnection
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
            "has_webhook_secret": c.encrypted_webhook_secret is not None, "webhook_path": f"/webhooks/{c.name}/",
            "poll_interval_seconds": c.poll_interval_seconds, "trusted_authors": c.trusted_authors,
            "refused_deliveries": c.refused_deliveries, "created_at": c.created_at}


class ConnectionCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    kind = serializers.CharField(max_length=10)
    url = serializers.CharField(max_length=500)
    api_url = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)
    token = serializers.CharField(max_length=2000, required=False, default="", allow_blank=True, trim_whitespace=False)
    ssh_key = serializers.CharField(max_length=20000, required=False, default="", allow_blank=True,
                                    trim_whitespace=False)
    webhook_secret = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)
    poll_interval_seconds = serializers.IntegerField(required=False, default=0)
    trusted_authors = serializers.ListField(child=serializers.CharField(max_length=100), required=False, default=list)


class ConnectionList(APIView):
    """Site admins only: list, or create (the answer carries the webhook secret, once)."""

    def get(self, request: Request) -> Response:
        if not is_site_admin(request.user):
            raise Forbidden("only site admins manage VCS connections")
        return Response([connection_json(c) for c in VcsConnection.objects.all()])

    def post(self, request: Request) -> Response:
        if not is_site_admin(request.user):
            raise Forbidden("only site admins manage VCS connections")
        data = ConnectionCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        connection, secret = vcs_connection_create(actor=request.user, **data.validated_data)
        return Response({**connection_json(connection), "webhook_secret": secret}, status=201)


class FollowSerializer(serializers.Serializer):
    connection = serializers.CharField(max_length=100, allow_null=True)
    repository = serializers.CharField(max_length=300, required=False, default="", allow_blank=True)
    branch = serializers.CharField(max_length=250, required=False, default="", allow_blank=True)
    working_directory = serializers.CharField(max_length=300, required=False, default="", allow_blank=True)
    trigger_patterns = serializers.ListField(child=serializers.CharField(max_length=300), required=False,
                                             default=list)
    tag_regex = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)
    keep_pending_runs = serializers.BooleanField(required=False, default=False)


def workspace_vcs_json(ws: Workspace) -> dict[str, Any] | None:
    if ws.vcs_connection_id is None:
        return None
    return {"connection": ws.vcs_connection.name, "repository": ws.vcs_repository, "branch": ws.vcs_branch,
            "working_directory": ws.vcs_working_directory, "trigger_patterns": ws.vcs_trigger_patterns,
            "tag_regex": ws.vcs_tag_regex, "keep_pending_runs": ws.vcs_keep_pending_runs,
            "last_commit": ws.vcs_last_sha or None}


class WorkspaceVcs(APIView):
    """`GET` what the workspace follows; `PUT` it (`admin`): {"connection": null} stops."""

    def get(self, request: Request, workspace_id: int) -> Response:
        ws = workspace_for(request.user, Action.READ, workspace_id)
        return Response({"vcs": workspace_vcs_json(ws)})

    def put(self, request: Request, workspace_id: int) -> Response:
        ws = workspace_for(request.user, Action.READ, workspace_id)
        data = FollowSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        ws = workspace_follow_repository(workspace=ws, actor=request.user, **data.validated_data)
        return Response({"vcs": workspace_vcs_json(ws)})


class HeldAllow(APIView):
    """`GET` the held pull request commits; `POST {"sha": ...}` plans one (`write`)."""

    def get(self, request: Request, workspace_id: int) -> Response:
        ws = workspace_for(request.user, Action.READ, workspace_id)
        return Response([{"sha": h.sha, "pull_request": h.number, "reason": h.reason, "run": h.allowed_run_id,
                          "created_at": h.created_at} for h in HeldPullRequest.objects.filter(workspace=ws)])

    def post(self, request: Request, workspace_id: int) -> Response:
        ws = workspace_for(request.user, Action.QUEUE_APPLY, workspace_id)
        sha = request.data.get("sha") if isinstance(request.data, dict) else None
        if not isinstance(sha, str) or not sha:
            raise Invalid(fields={"sha": ["the held commit's id"]})
        task = held_allow(workspace=ws, sha=sha, actor=request.user)
        return Response({"run": task.id}, status=201)
