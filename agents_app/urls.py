"""Pool pages; included as `path("pools/", include("agents_app.urls"))`."""

from __future__ import annotations

from django.urls import path

from agents_app import views

urlpatterns = [
    path("", views.pool_list, name="pool-list"),
    path("<int:pool_id>/", views.pool_detail, name="pool-detail"),
    path("<int:pool_id>/settings/", views.pool_settings, name="pool-settings"),
    path("<int:pool_id>/freeze-windows/<int:window_id>/lift/", views.pool_freeze_lift, name="pool-freeze-lift"),
]
