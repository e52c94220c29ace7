"""Pages of the UI (included at the site root)."""

from __future__ import annotations

from django.urls import path

from tasks_app import views, views_confirm, views_runs, views_workspace

urlpatterns = [
    path("", views.workspace_list, name="workspace-list"),
    path("workspaces/<int:workspace_id>/", views.workspace_detail, name="workspace-detail"),
    path("workspaces/<int:workspace_id>/runs/", views.workspace_run_create, name="workspace-run-create"),
    path("workspaces/<int:workspace_id>/settings/", views_workspace.workspace_settings, name="workspace-settings"),
    path("workspaces/<int:workspace_id>/vcs/", views_workspace.workspace_vcs, name="workspace-vcs"),
    path("workspaces/<int:workspace_id>/lock/", views_workspace.workspace_lock, {"lock": True}, name="workspace-lock"),
    path("workspaces/<int:workspace_id>/unlock/", views_workspace.workspace_lock, {"lock": False},
         name="workspace-unlock"),
    path("workspaces/<int:workspace_id>/access/", views_workspace.workspace_access, name="workspace-access"),
    path("workspaces/<int:workspace_id>/sharing/", views_workspace.workspace_sharing, name="workspace-sharing"),
    path("workspaces/<int:workspace_id>/variables/", views_workspace.variable_add, name="workspace-variable-create"),
    path("variables/<int:variable_id>/", views_workspace.variable_edit, name="variable-update"),
    path("variables/<int:variable_id>/delete/", views_workspace.variable_remove, name="variable-delete"),
    path("workspaces/<int:workspace_id>/configuration/", views_workspace.configuration_upload,
         name="workspace-configuration-upload"),
    path("notification-destinations/<int:destination_id>/test/", views_workspace.notification_test,
         name="notification-destination-test"),
    path("workspaces/<int:workspace_id>/state/diff/", views_workspace.state_diff, name="workspace-state-diff"),
    path("runs/<int:task_id>/", views_runs.run_detail, name="run-detail"),
    path("runs/<int:task_id>/log.txt", views_runs.run_log_download, name="run-log-download"),
    path("runs/<int:task_id>/confirm-dialog/", views_confirm.run_confirm_dialog, name="run-confirm-dialog"),
    path("runs/<int:task_id>/confirm/", views_confirm.run_confirm_view, name="run-confirm"),
    path("runs/<int:task_id>/discard/", views_confirm.run_discard_view, name="run-discard"),
    path("runs/<int:task_id>/override/", views_confirm.run_policy_override_view, name="run-policy-override"),
    path("runs/<int:task_id>/cancel/", views_confirm.run_cancel_view, name="run-cancel"),
    path("tokens/", views.tokens_page, name="tokens"),
    path("tokens/<str:key>/revoke/", views.token_revoke_view, name="token-revoke"),
]
