"""Pages of the UI (included at the site root)."""

from __future__ import annotations

from django.urls import path

from tasks_app import views, views_confirm, views_runs

urlpatterns = [
    path("", views.workspace_list, name="workspace-list"),
    path("workspaces/<int:workspace_id>/", views.workspace_detail, name="workspace-detail"),
    path("workspaces/<int:workspace_id>/runs/", views.workspace_run_create, name="workspace-run-create"),
    path("runs/<int:task_id>/", views_runs.run_detail, name="run-detail"),
    path("runs/<int:task_id>/log.txt", views_runs.run_log_download, name="run-log-download"),
    path("runs/<int:task_id>/confirm-dialog/", views_confirm.run_confirm_dialog, name="run-confirm-dialog"),
    path("runs/<int:task_id>/confirm/", views_confirm.run_confirm_view, name="run-confirm"),
    path("runs/<int:task_id>/discard/", views_confirm.run_discard_view, name="run-discard"),
    path("runs/<int:task_id>/cancel/", views_confirm.run_cancel_view, name="run-cancel"),
    path("tokens/", views.tokens_page, name="tokens"),
    path("tokens/<str:key>/revoke/", views.token_revoke_view, name="token-revoke"),
]
