"""/api/v2/: the TFE API subset (tasks_app/tfe/views.py); anything else under it is a
JSON:API 404, not the site's HTML one."""

from django.urls import path, re_path

from tasks_app.tfe import views, views_state

urlpatterns = [
    path("ping", views.ping, name="tfe-ping"),
    path("account/details", views.account_details, name="tfe-account-details"),
    path("organizations/<str:org>", views.organization, name="tfe-organization"),
    path("organizations/<str:org>/entitlement-set", views.entitlement_set, name="tfe-entitlement-set"),
    path("organizations/<str:org>/runs/queue", views.run_queue, name="tfe-run-queue"),
    path("organizations/<str:org>/workspaces", views.organization_workspaces, name="tfe-workspaces"),
    path("organizations/<str:org>/workspaces/<str:name>", views.organization_workspace, name="tfe-workspace-by-name"),
    path("workspaces/<str:ident>", views.workspace, name="tfe-workspace"),
    path("workspaces/<str:ident>/actions/<str:action>", views.workspace_action, name="tfe-workspace-action"),
    path("workspaces/<str:ident>/configuration-versions", views.configuration_versions,
         name="tfe-configuration-versions"),
    path("workspaces/<str:ident>/runs", views.workspace_runs, name="tfe-workspace-runs"),
    path("workspaces/<str:ident>/relationships/tags", views.workspace_tags, name="tfe-workspace-tags"),
    path("workspaces/<str:ident>/relationships/remote-state-consumers", views.remote_state_consumers,
         name="tfe-remote-state-consumers"),
    path("configuration-versions/<str:ident>", views.configuration_version, name="tfe-configuration-version"),
    path("configuration-versions/<str:ident>/upload/<str:token>", views.configuration_upload,
         name="tfe-configuration-upload"),
    path("runs", views.runs, name="tfe-runs"),
    path("runs/<str:ident>", views.run, name="tfe-run"),
    path("runs/<str:ident>/actions/<str:action>", views.run_action, name="tfe-run-action"),
    path("runs/<str:ident>/run-events", views.run_events, name="tfe-run-events"),
    path("runs/<str:ident>/policy-checks", views.run_policy_checks, name="tfe-run-policy-checks"),
    path("policy-checks/<str:ident>", views.policy_check, name="tfe-policy-check"),
    path("policy-checks/<str:ident>/output", views.policy_check_output, name="tfe-policy-check-output"),
    path("policy-checks/<str:ident>/actions/<str:action>", views.policy_check_action, name="tfe-policy-check-action"),
    path("plans/<str:ident>", views.plan, name="tfe-plan"),
    path("plans/<str:ident>/logs/<str:token>", views.plan_log, name="tfe-plan-log"),
    path("applies/<str:ident>", views.apply, name="tfe-apply"),
    path("applies/<str:ident>/logs/<str:token>", views.apply_log, name="tfe-apply-log"),
    path("workspaces/<str:ident>/current-state-version", views_state.current_state_version,
         name="tfe-current-state-version"),
    path("workspaces/<str:ident>/current-state-version-outputs", views_state.current_state_version_outputs,
         name="tfe-current-state-version-outputs"),
    path("workspaces/<str:ident>/state-versions", views_state.state_versions, name="tfe-state-versions"),
    path("state-versions/<str:ident>", views_state.state_version, name="tfe-state-version"),
    path("state-versions/<str:ident>/download/<str:token>", views_state.state_download, name="tfe-state-download"),
    path("state-version-outputs/<str:ident>", views_state.state_version_output, name="tfe-state-version-output"),
    re_path(r"^.*$", views.not_found),
]
