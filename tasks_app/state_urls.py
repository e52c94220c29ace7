"""Terraform's http state backend (tasks_app/state_backend.py), included under api/v1/.

No trailing slashes: these are the exact addresses written into Terraform's backend config
(`address`, `lock_address`, `unlock_address`) by the agents and by people's own configs."""

from django.urls import path

from tasks_app import state_backend

urlpatterns = [
    path("workspaces/<int:workspace_id>/state", state_backend.state_endpoint, name="state-backend"),
    path("workspaces/<int:workspace_id>/state/lock", state_backend.state_lock_endpoint, name="state-backend-lock"),
]
