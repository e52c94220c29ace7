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

from agents_app.models import Agent, AgentPool, FreezeWindow, Pod, ScalingDecision
from agents_app.serializers import (
    AgentSerializer,
    FreezeLiftSerializer,
    FreezeWindowSerializer,
    PodSerializer,
    PoolCreatedSerializer,
    PoolSerializer,
    ScalingDecisionSerializer,
)
from agents_app.services.agents import pool_create
from agents_app.services.freeze_windows import (
    freeze_window_create,
    freeze_window_delete,
    freeze_window_lift,
    freeze_window_update,
)
from iacplatform.permissions import is_site_admin
from tasks_app.services.audit import audit_record
from tasks_app.services.sweep import pool_freeze_changed


class IsSiteAdminOrReadOnly(permissions.BasePermission):
    message = "only a site admin may create or change pools"

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        return is_site_admin(request.user)


class IsSiteAdmin(permissions.BasePermission):
    message = "only a site admin may see a pool's agents"

    def has_permission(self, request: Request, view: Any) -> bool:
        return is_site_admin(request.user)


PERMISSIONS = [permissions.IsAuthenticated, IsSiteAdminOrReadOnly]


def _usable_pools(request: Request) -> QuerySet[AgentPool]:
    """Site admins see every pool; others see the pools their teams may put workspaces on."""
    pools = AgentPool.objects.order_by("name")
    if is_site_admin(request.user):
        return pools
    return pools.filter(teams__user=request.user).distinct()


class PoolListCreate(generics.ListCreateAPIView):
    serializer_class = PoolSerializer
    permission_classes = PERMISSIONS
    parser_classes = [JSONParser]

    def get_queryset(self) -> QuerySet[AgentPool]:
        return _usable_pools(self.request)

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

    def get_queryset(self) -> QuerySet[AgentPool]:
        return _usable_pools(self.request)

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        with transaction.atomic():
            pool = serializer.save()
            changed = {name: value for name, value in serializer.validated_data.items()}
            audit_record(actor=self.request.user, action="pool.update", obj=pool, data=changed)


class PoolAgentList(generics.ListAPIView):
    serializer_class = AgentSerializer
    permission_classes = [permissions.IsAuthenticated, IsSiteAdmin]

    def get_queryset(self) -> QuerySet[Agent]:
        pool = get_object_or_404(AgentPool, id=self.kwargs["pk"])
        # Online agents first (the ones doing work), then the most recently seen.
        return (
            Agent.objects.filter(pool=pool)
            .prefetch_related("slots")
            .order_by("-status", "-last_heartbeat_at", "id")
        )


class IsSiteAdminOrReadOnlyWindows(IsSiteAdminOrReadOnly):
    message = "only a site admin may create, change, delete or lift freeze windows"


WINDOW_PERMISSIONS = [permissions.IsAuthenticated, IsSiteAdminOrReadOnlyWindows]


def _after_commit(pool_id: int) -> None:
    # Enter or leave the freeze at once rather than at the next sweep.
    transaction.on_commit(lambda: pool_freeze_changed(pool_id=pool_id), robust=True)


def _window_fields(request: Request, *, partial: bool, instance: FreezeWindow | None = None) -> dict[str, Any]:
    """The request's fields, parsed (types) by the serializer; the service checks meaning."""
    params = FreezeWindowSerializer(instance, data=request.data, partial=partial)
    params.is_valid(raise_exception=True)
    return dict(params.validated_data)


class PoolFreezeWindowList(generics.ListCreateAPIView):
    """The pool's freeze windows: whoever may see the pool may read them (they explain why
    runs wait); site admins create them."""

    serializer_class = FreezeWindowSerializer
    permission_classes = WINDOW_PERMISSIONS
    parser_classes = [JSONParser]

    def pool(self) -> AgentPool:
        return get_object_or_404(_usable_pools(self.request), id=self.kwargs["pk"])

    def get_queryset(self) -> QuerySet[FreezeWindow]:
        return FreezeWindow.objects.filter(pool=self.pool()).select_related("lifted_by").order_by("id")

    def post(self, request: Request, pk: int) -> Response:
        pool = self.pool()
        window = freeze_window_create(pool=pool, actor=request.user, fields=_window_fields(request, partial=False))
        _after_commit(pool.id)
        return Response(FreezeWindowSerializer(window).data, status=status.HTTP_201_CREATED)


class PoolFreezeWindowDetail(generics.RetrieveUpdateDestroyAPIView):
    serializer_class = FreezeWindowSerializer
    permission_classes = WINDOW_PERMISSIONS
    parser_classes = [JSONParser]
    http_method_names = ["get", "patch", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[FreezeWindow]:
        pool = get_object_or_404(_usable_pools(self.request), id=self.kwargs["pk"])
        return FreezeWindow.objects.filter(pool=pool).select_related("lifted_by", "pool")

    def get_object(self) -> FreezeWindow:
        return get_object_or_404(self.get_queryset(), id=self.kwargs["window_id"])

    def patch(self, request: Request, pk: int, window_id: int) -> Response:
        window = self.get_object()
        fields = _window_fields(request, partial=True, instance=window)
        window = freeze_window_update(window=window, actor=request.user, fields=fields)
        _after_commit(window.pool_id)
        return Response(FreezeWindowSerializer(window).data)

    def perform_destroy(self, instance: FreezeWindow) -> None:
        freeze_window_delete(window=instance, actor=self.request.user)
        _after_commit(instance.pool_id)


class PoolFreezeWindowLift(generics.GenericAPIView):
    """Lift the window's active occurrence now, with a reason (site admins)."""

    serializer_class = FreezeLiftSerializer
    permission_classes = [permissions.IsAuthenticated, IsSiteAdminOrReadOnlyWindows]
    parser_classes = [JSONParser]

    @extend_schema(request=FreezeLiftSerializer, responses={200: FreezeWindowSerializer})
    def post(self, request: Request, pk: int, window_id: int) -> Response:
        window = get_object_or_404(FreezeWindow, pool_id=pk, id=window_id)
        params = FreezeLiftSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        window = freeze_window_lift(window_id=window.id, actor=request.user, reason=params.validated_data["reason"])
        _after_commit(window.pool_id)
        return Response(FreezeWindowSerializer(window).data)
class PoolPodList(generics.ListAPIView):
    """The pool's pods, live ones first (`?all=1` includes those gone)."""

    serializer_class = PodSerializer
    permission_classes = [permissions.IsAuthenticated, IsSiteAdmin]

    def get_queryset(self) -> QuerySet[Pod]:
        pool = get_object_or_404(AgentPool, id=self.kwargs["pk"])
        pods = Pod.objects.filter(pool=pool).select_related("agent").order_by("-id")
        if self.request.query_params.get("all") not in ("1", "true"):
            pods = pods.exclude(phase="gone")
        return pods


class PoolScalingDecisionList(generics.ListAPIView):
    """The autoscaler's decisions for the pool, newest first, each with its inputs and reason."""

    serializer_class = ScalingDecisionSerializer
    permission_classes = [permissions.IsAuthenticated, IsSiteAdmin]

    def get_queryset(self) -> QuerySet[ScalingDecision]:
        pool = get_object_or_404(AgentPool, id=self.kwargs["pk"])
        return ScalingDecision.objects.filter(pool=pool).order_by("-id")
