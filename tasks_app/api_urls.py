"""The user REST API, included under /api/v1/ (see tasks_app.api)."""

from __future__ import annotations

from django.urls import path

from tasks_app import api, api_access, api_policies, api_workflows
from tasks_app.vcs import views as vcs_views

urlpatterns = [
    path("variable-sets/", api_workflows.VariableSetListCreate.as_view(), name="api-variable-set-list"),
    path("variable-sets/<int:pk>/", api_workflows.VariableSetDetail.as_view(), name="api-variable-set-detail"),
    path("variable-sets/<int:set_id>/variables/", api_workflows.SetVariableListCreate.as_view(),
         name="api-variable-set-variable-list"),
    path("variable-sets/<int:set_id>/variables/<int:pk>/", api_workflows.SetVariableDetail.as_view(),
         name="api-variable-set-variable-detail"),
    path("variable-sets/<int:set_id>/workspaces/<int:workspace_id>/", api_workflows.VariableSetWorkspace.as_view(),
         name="api-variable-set-workspace"),
    path("workspaces/<int:workspace_id>/run-triggers/", api_workflows.RunTriggerListCreate.as_view(),
         name="api-run-trigger-list"),
    path("workspaces/<int:workspace_id>/run-triggers/<int:source_id>/", api_workflows.RunTriggerRemove.as_view(),
         name="api-run-trigger-detail"),
    path("workspaces/<int:workspace_id>/notification-destinations/", api_workflows.DestinationListCreate.as_view(),
         name="api-notification-destination-list"),
    path("notification-destinations/<int:pk>/", api_workflows.DestinationDetail.as_view(),
         name="api-notification-destination-detail"),
    path("notification-destinations/<int:pk>/test/", api_workflows.DestinationTest.as_view(),
         name="api-notification-destination-test"),
    path("workspaces/<int:workspace_id>/drift-check/", api_workflows.DriftCheck.as_view(), name="api-drift-check"),
    path("workspaces/<int:workspace_id>/variable-sets/", api_workflows.WorkspaceVariableSets.as_view(),
         name="api-workspace-variable-sets"),
    path("audit-events/", api_access.AuditEventList.as_view(), name="api-audit-list"),
    path("tokens/", api_access.TokenListCreate.as_view(), name="api-token-list"),
    path("tokens/<str:key>/", api_access.TokenRevoke.as_view(), name="api-token-detail"),
    path("workspaces/<int:workspace_id>/access/", api_access.WorkspaceAccessListSet.as_view(), name="api-access-list"),
    path(
        "workspaces/<int:workspace_id>/access/<str:team>/",
        api_access.WorkspaceAccessRemove.as_view(),
        name="api-access-detail",
    ),
    path("vcs-connections/", vcs_views.ConnectionList.as_view(), name="api-vcs-connection-list"),
    path("vcs-connections/<int:connection_id>/", vcs_views.ConnectionDetail.as_view(),
         name="api-vcs-connection-detail"),
    path("workspaces/<int:workspace_id>/vcs/", vcs_views.WorkspaceVcs.as_view(), name="api-workspace-vcs"),
    path("workspaces/<int:workspace_id>/vcs/held/", vcs_views.HeldAllow.as_view(), name="api-workspace-vcs-held"),
    path("workspaces/", api.WorkspaceListCreate.as_view(), name="api-workspace-list"),
    path("workspaces/<int:pk>/", api.WorkspaceDetail.as_view(), name="api-workspace-detail"),
    path(
        "workspaces/<int:workspace_id>/configuration-versions/",
        api.ConfigurationVersionListCreate.as_view(),
        name="api-configuration-version-list",
    ),
    path("workspaces/<int:workspace_id>/variables/", api.VariableListCreate.as_view(), name="api-variable-list"),
    path("variables/<int:pk>/", api.VariableDetail.as_view(), name="api-variable-detail"),
    path("workspaces/<int:workspace_id>/runs/", api.RunListCreate.as_view(), name="api-run-list"),
    path("runs/<int:pk>/", api.RunDetail.as_view(), name="api-run-detail"),
    path("runs/<int:pk>/confirm/", api.RunConfirm.as_view(), name="api-run-confirm"),
    path("runs/<int:pk>/discard/", api.RunDiscard.as_view(), name="api-run-discard"),
    path("runs/<int:pk>/cancel/", api.RunCancel.as_view(), name="api-run-cancel"),
    path("runs/<int:pk>/prepare/", api.RunPrepare.as_view(), name="api-run-prepare"),
    path("runs/<int:pk>/logs/", api.RunLogs.as_view(), name="api-run-logs"),
    path("runs/<int:pk>/override/", api_policies.RunPolicyOverride.as_view(), name="api-run-override"),
    path("policy-sets/", api_policies.PolicySetListCreate.as_view(), name="api-policy-set-list"),
    path("policy-sets/<int:pk>/", api_policies.PolicySetDetail.as_view(), name="api-policy-set-detail"),
    path("policy-sets/<int:pk>/sync/", api_policies.PolicySetSync.as_view(), name="api-policy-set-sync"),
    path("workspaces/<int:workspace_id>/outputs/", api.WorkspaceOutputs.as_view(), name="api-workspace-outputs"),
    path(
        "workspaces/<int:workspace_id>/state-versions/",
        api.StateVersionList.as_view(),
        name="api-state-version-list",
    ),
]
