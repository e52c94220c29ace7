"""Remote state sharing through the TFE API: who may read a workspace's state with a job's
credential. A run's terraform (`terraform_remote_state` with backend "remote") calls with
its job's credential (the agent gives it as TF_TOKEN_<host>); that credential reads exactly
its own workspace's state and the state of the workspaces that list its workspace as a
remote state consumer, nothing else of the API, and dies with its job."""

from __future__ import annotations

from typing import Any

from tasks_app.dispatch.models import Job
from tasks_app.models import Workspace


def job_may_read_state(job: Job, workspace: Workspace) -> bool:
    consumer = job.task.workspace_id
    return workspace.id == consumer or workspace.remote_state_consumers.filter(id=consumer).exists()


def request_job(request: Any) -> Job | None:
    """The job whose credential authenticated the request (tasks_app/tfe/jsonapi.py)."""
    return getattr(request, "tfe_job", None)
