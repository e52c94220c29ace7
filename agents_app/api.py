"""Pools and their agents in the user REST API. Anyone signed in may look; only admins
(is_staff) create or change a pool, because a pool decides where code runs and with what."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, permissions, serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response

from agents_app.models import Agent, AgentPool
from agents_app.serializers import (
    AgentSerializer,
    PoolCreatedSerializer,
    PoolSerializer,
)
from agents_app.services.agents import pool_create
from tasks_app.services.audit import audit_record


class IsStaffOrReadOnly(permissions.BasePermission):
    message = "only an admin may create or change pools"

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        return bool(request.user and request.user.is_staff)


PERMISSIONS = [permissions.IsAuthenticated, IsStaffOrReadOnly]


class PoolListCreate(generics.ListCreateAPIView):
    serializer_class = PoolSerializer
    permission_classes = PERMISSIONS
    parser_classes = [JSONParser]
    queryset = AgentPool.objects.order_by("name")

    @extend_schema(request=PoolSerializer, responses={201: PoolCreatedSerializer})
    def post(self, request: Request) -> Response:
        params = PoolSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        fields = dict(params.validated_data)
        with transaction.atomic():
            pool, token = pool_create(name=fields.pop("name"), **fields)
            audit_record(actor=request.user, action="pool.create", obj=pool, data={"name": pool.name})
        # The plain token exists only in this response: the database keeps its hash.
        pool.token = token  # type: ignore[attr-defined]
        return Response(PoolCreatedSerializer(pool).data, status=status.HTTP_201_CREATED)


class PoolDetail(generics.RetrieveUpdateAPIView):
    serializer_class = PoolSerializer
    permission_classes = PERMISSIONS
    parser_classes = [JSONParser]
    http_method_names = ["get", "patch", "head", "options"]
    queryset = AgentPool.objects.all()

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        with transaction.atomic():
            pool = serializer.save()
            changed = {name: value for name, value in serializer.validated_data.items()}
            audit_record(actor=self.request.user, action="pool.update", obj=pool, data=changed)


class PoolAgentList(generics.ListAPIView):
    serializer_class = AgentSerializer

    def get_queryset(self) -> QuerySet[Agent]:
        pool = get_object_or_404(AgentPool, id=self.kwargs["pk"])
        # Online agents first (the ones doing work), then the most recently seen.
        return (
            Agent.objects.filter(pool=pool)
            .prefetch_related("slots")
            .order_by("-status", "-last_heartbeat_at", "id")
        )
