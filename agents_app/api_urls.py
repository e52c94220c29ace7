"""Pools and agents in the user REST API, included under /api/v1/ (see agents_app.api)."""

from __future__ import annotations

from django.urls import path

from agents_app import api

urlpatterns = [
    path("pools/", api.PoolListCreate.as_view(), name="api-pool-list"),
    path("pools/<int:pk>/", api.PoolDetail.as_view(), name="api-pool-detail"),
    path("pools/<int:pk>/agents/", api.PoolAgentList.as_view(), name="api-pool-agents"),
    path("pools/<int:pk>/freeze-windows/", api.PoolFreezeWindowList.as_view(), name="api-pool-freeze-windows"),
    path("pools/<int:pk>/freeze-windows/<int:window_id>/", api.PoolFreezeWindowDetail.as_view(),
         name="api-pool-freeze-window-detail"),
    path("pools/<int:pk>/freeze-windows/<int:window_id>/lift/", api.PoolFreezeWindowLift.as_view(),
         name="api-pool-freeze-window-lift"),
    path("pools/<int:pk>/pods/", api.PoolPodList.as_view(), name="api-pool-pods"),
    path("pools/<int:pk>/scaling-decisions/", api.PoolScalingDecisionList.as_view(), name="api-pool-scaling-decisions"),
]
