"""REST API for who may do what: users' API tokens and teams' access to a workspace."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from iacplatform.errors import Forbidden, NotFound
from iacplatform.pagination import NewestFirst
from iacplatform.permissions import Action, is_site_admin, workspace_for
from tasks_app.models import AccessLevel, ApiToken, AuditEvent, WorkspaceAccess
from tasks_app.serializers import StrictCharField, StrictChoiceField
from tasks_app.services.tokens import token_create, token_revoke
from tasks_app.services.workspaces import workspace_access_remove, workspace_access_set

# --- tokens --------------------------------------------------------------------------------


class TokenSerializer(serializers.ModelSerializer):
    key = serializers.CharField(source="token_key", read_only=True, help_text="public prefix: the token's id")
    user = serializers.CharField(source="user.username", read_only=True)
    expires_at = serializers.DateTimeField(source="expiry", read_only=True, allow_null=True)

    class Meta:
        model = ApiToken
        fields = ["key", "name", "user", "created", "last_used_at", "expires_at"]
        read_only_fields = fields


class TokenCreateSerializer(serializers.Serializer):
    name = StrictCharField(max_length=100)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class TokenCreatedSerializer(TokenSerializer):
    token = serializers.CharField(read_only=True, help_text="shown once: only a digest is stored")

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


def _token_owner(request: Request) -> Any:
    """Whose tokens: your own; a site admin names anyone with ?user=<username>."""
    username = request.query_params.get("user")
    if not username or username == request.user.get_username():
        return request.user
    if not is_site_admin(request.user):
        raise Forbidden("only a site admin may see or revoke another user's tokens")
    user = User.objects.filter(username=username).first()
    if user is None:
        raise NotFound(f"no user '{username}'")
    return user


class TokenListCreate(APIView):
    parser_classes = [JSONParser]

    @extend_schema(responses={200: TokenSerializer(many=True)})
    def get(self, request: Request) -> Response:
        tokens = ApiToken.objects.filter(user=_token_owner(request)).select_related("user")
        return Response(TokenSerializer(tokens, many=True).data)

    @extend_schema(request=TokenCreateSerializer, responses={201: TokenCreatedSerializer})
    def post(self, request: Request) -> Response:
        params = TokenCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        token, plain = token_create(user=request.user, name=params.validated_data["name"],
                                    expires_at=params.validated_data["expires_at"])
        token.token = plain  # type: ignore[attr-defined]
        return Response(TokenCreatedSerializer(token).data, status=status.HTTP_201_CREATED)


class TokenRevoke(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, key: str) -> Response:
        token_revoke(user=_token_owner(request), key=key, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- team access to a workspace -------------------------------------------------------------


class AccessSerializer(serializers.Serializer):
    team = StrictCharField(max_length=150, help_text="the team's (group's) name")
    level = StrictChoiceField(choices=AccessLevel.choices)


class WorkspaceAccessListSet(APIView):
    """GET the teams' levels on a workspace; POST {team, level} sets one (admin level)."""

    parser_classes = [JSONParser]

    @extend_schema(responses={200: AccessSerializer(many=True)})
    def get(self, request: Request, workspace_id: int) -> Response:
        ws = workspace_for(request.user, Action.READ, workspace_id)
        rows = WorkspaceAccess.objects.filter(workspace=ws).select_related("team")
        return Response([{"team": r.team.name, "level": r.level} for r in rows])

    @extend_schema(request=AccessSerializer, responses={200: AccessSerializer})
    def post(self, request: Request, workspace_id: int) -> Response:
        ws = workspace_for(request.user, Action.MANAGE_ACCESS, workspace_id)
        params = AccessSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        access = workspace_access_set(workspace=ws, team_name=params.validated_data["team"],
                                      level=params.validated_data["level"], actor=request.user)
        return Response({"team": access.team.name, "level": access.level})


class WorkspaceAccessRemove(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, workspace_id: int, team: str) -> Response:
        ws = workspace_for(request.user, Action.MANAGE_ACCESS, workspace_id)
        workspace_access_remove(workspace=ws, team_name=team, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- audit ---------------------------------------------------------------------------------


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_label", read_only=True)

    class Meta:
        model = AuditEvent
        fields = ["id", "created_at", "actor", "address", "action", "object_type", "object_id", "data"]
        read_only_fields = fields


class AuditEventQuerySerializer(serializers.Serializer):
    action = serializers.CharField(required=False, allow_blank=True, help_text="only events of this action")
    object_type = serializers.CharField(required=False, allow_blank=True, help_text="only events on this kind of object")
    object_id = serializers.CharField(required=False, allow_blank=True, help_text="only events on this object")


class AuditEventList(generics.ListAPIView):
    """Every human action, newest first (site admins); `?action=` and `?object_type=` filter."""

    serializer_class = AuditEventSerializer
    pagination_class = NewestFirst

    @extend_schema(parameters=[AuditEventQuerySerializer])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> Any:
        if not is_site_admin(self.request.user):
            raise Forbidden("only site admins read the audit log")
        events = AuditEvent.objects.order_by("-id")
        query = AuditEventQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)  # e.g. a NUL character, which PostgreSQL cannot compare
        for param, value in query.validated_data.items():
            if value:
                events = events.filter(**{param: value})
        return events
