"""Our objects as TFE API resources (JSON:API `data` objects). Reads only."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings

from agents_app.protocol import PlanMode
from iacplatform.permissions import Action, allowed_actions
from tasks_app.models import ConfigurationUpload, Plan, PolicyCheck, StateVersion, Task, Workspace
from tasks_app.states import BLOCKING, EnforcementLevel, Operation, PolicyStatus, RunStatus
from tasks_app.tfe import signing
from tasks_app.tfe.statuses import apply_status, plan_status, run_actions, tfe_run_status


def organization_name() -> str:
    return settings.IAC_ORGANIZATION


def _time(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def ref(kind: str, ident: str | None) -> dict[str, Any]:
    return {"data": {"type": kind, "id": ident} if ident else None}


def organization() -> dict[str, Any]:
    name = organization_name()
    return {"id": name, "type": "organizations",
            "attributes": {"name": name, "external-id": f"org-{name}", "email": "",
                           "permissions": {"can-create-workspace": True, "can-update": False, "can-destroy": False}}}


def entitlement_set() -> dict[str, Any]:
    # `operations`: remote runs on our agents (without it terraform runs locally and uses the
    # workspace for state only). The rest we do not offer.
    return {"id": f"org-{organization_name()}", "type": "entitlement-sets",
            "attributes": {"operations": True, "state-storage": True, "teams": True, "private-module-registry": False,
                           "sentinel": False, "cost-estimation": False, "vcs-integrations": False, "agents": True,
                           "audit-logging": True, "configuration-designer": False, "sso": False,
                           "run-tasks": False, "private-policy-agents": False}}


def current_run_id(workspace: Workspace) -> int | None:
    """The run that holds the workspace's apply queue (TFE's `current-run`): the oldest
    applyable run that blocks the queue, else the latest applyable run."""
    runs = Task.objects.filter(workspace=workspace, operation=Operation.PLAN_AND_APPLY)
    blocking = runs.filter(status__in=list(BLOCKING)).order_by("id").values_list("id", flat=True).first()
    return blocking or runs.order_by("-id").values_list("id", flat=True).first()


def workspace(ws: Workspace, user: Any) -> dict[str, Any]:
    may = allowed_actions(user, ws)
    current = current_run_id(ws)
    return {
        "id": f"ws-{ws.id}", "type": "workspaces",
        "attributes": {
            "name": ws.name,
            "tag-names": ws.tags,
            "execution-mode": "remote",
            "operations": True,
            "auto-apply": ws.auto_apply,
            "locked": ws.locked,
            # The CLI skips its version check for "latest"; a pinned workspace names its pin
            # (the agents that run it are the only ones its jobs go to).
            "terraform-version": ws.terraform_version or "latest",
            "working-directory": ws.vcs_working_directory,
            "structured-run-output-enabled": False,
            "speculative-enabled": True,
            "global-remote-state": False,
            "queue-all-runs": False,
            "file-triggers-enabled": False,
            "source": "tfe-api",
            # A workspace that follows a repository says so: terraform then refuses `apply`
            # itself ("Apply not allowed for workspaces with a VCS connection").
            "vcs-repo": vcs_repo(ws),
            "created-at": _time(ws.created_at),
            "updated-at": _time(ws.created_at),
            "resource-count": 0,
            "actions": {"is-destroyable": Action.DELETE in may},
            "permissions": {
                "can-update": Action.SETTINGS in may,
                "can-destroy": Action.DELETE in may,
                "can-queue-run": Action.QUEUE_PLAN in may,
                "can-queue-apply": Action.QUEUE_APPLY in may,
                "can-queue-destroy": Action.QUEUE_APPLY in may,
                "can-read-settings": Action.READ in may,
                "can-lock": Action.LOCK in may,
                "can-unlock": Action.LOCK in may,
                "can-force-unlock": Action.FORCE_UNLOCK in may,
                "can-read-variable": Action.READ_VARIABLES in may,
                "can-update-variable": Action.EDIT_VARIABLES in may,
                "can-read-state-versions": Action.READ_STATE in may,
                "can-read-state-outputs": Action.READ in may,
                "can-create-state-versions": Action.WRITE_STATE in may,
                "can-manage-run-tasks": False,
                "can-force-delete": Action.DELETE in may,
            },
            "setting-overwrites": {"execution-mode": False, "agent-pool": False},
        },
        "relationships": {
            "organization": ref("organizations", organization_name()),
            "current-run": ref("runs", f"run-{current}" if current else None),
        },
        "links": {"self": f"/api/v2/organizations/{organization_name()}/workspaces/{ws.name}"},
    }


def vcs_repo(ws: Workspace) -> dict[str, Any] | None:
    """HCP Terraform's vcs-repo of a workspace that follows a repository (None otherwise)."""
    if ws.vcs_connection_id is None:
        return None
    return {"identifier": ws.vcs_repository, "display-identifier": ws.vcs_repository, "branch": ws.vcs_branch,
            "ingress-submodules": False, "tags-regex": ws.vcs_tag_regex or None,
            "service-provider": ws.vcs_connection.kind, "oauth-token-id": None,
            "repository-http-url": None, "webhook-url": None}


def configuration_version(upload: ConfigurationUpload) -> dict[str, Any]:
    if upload.configuration_version_id is not None:
        status = "uploaded"
    elif upload.error:
        status = "errored"
    else:
        status = "pending"
    attributes: dict[str, Any] = {
        "status": status,
        "source": "tfe-api",
        "speculative": upload.speculative,
        "auto-queue-runs": upload.auto_queue_runs,
        "provisional": False,
        "error": "archive_refused" if upload.error else None,
        "error-message": upload.error or None,
        "status-timestamps": {},
    }
    if status == "pending":
        token = signing.sign("upload", upload.id)
        attributes["upload-url"] = signing.absolute(f"/api/v2/configuration-versions/cv-{upload.id}/upload/{token}")
    return {"id": f"cv-{upload.id}", "type": "configuration-versions", "attributes": attributes,
            "relationships": {}}


def _plan_done(task: Task) -> bool:
    return bool(task.plan_hash)


def _confirmed(task: Task) -> bool:
    return task.confirmed_at is not None


def _counts(task: Task) -> dict[str, int]:
    try:
        summary = task.plan.summary if task.plan_hash else {}
    except Plan.DoesNotExist:
        summary = {}
    return {"resource-additions": int(summary.get("add", 0)), "resource-changes": int(summary.get("change", 0)),
            "resource-destructions": int(summary.get("destroy", 0)), "resource-imports": int(summary.get("import", 0))}


def run(task: Task, user: Any, *, upload_id: int | None = None) -> dict[str, Any]:
    may = allowed_actions(user, task.workspace)
    return {
        "id": f"run-{task.id}", "type": "runs",
        "attributes": {
            "status": tfe_run_status(task.status, task.policy_status),
            "message": task.message,
            "source": "tfe-api",
            "created-at": _time(task.created_at),
            "has-changes": bool(task.has_changes),
            "is-destroy": task.plan_mode == PlanMode.DESTROY,
            "refresh": True,
            "refresh-only": task.plan_mode == PlanMode.REFRESH_ONLY,
            "target-addrs": task.plan_targets or None,
            "replace-addrs": task.plan_replace or None,
            "auto-apply": task.auto_apply or task.workspace.auto_apply,
            "plan-only": task.operation == Operation.PLAN,
            "save-plan": False,
            "position-in-queue": 0,
            "terraform-version": task.terraform_version or task.workspace.terraform_version or "latest",
            "variables": [{"key": k, "value": v} for k, v in sorted(task.run_variables.items())],
            "status-timestamps": {},
            "actions": run_actions(task.status, task.policy_status),
            "permissions": {
                "can-apply": Action.CONFIRM in may,
                "can-cancel": Action.CANCEL in may,
                "can-discard": Action.DISCARD in may,
                "can-force-cancel": Action.FORCE_CANCEL in may,
                "can-force-execute": False,
            },
        },
        "relationships": {
            "workspace": ref("workspaces", f"ws-{task.workspace_id}"),
            "configuration-version": ref("configuration-versions", f"cv-{upload_id}" if upload_id else None),
            "plan": ref("plans", f"plan-{task.id}"),
            "apply": ref("applies", f"apply-{task.id}"),
            "cost-estimate": {"data": None},
            # One check per run (all the sets that govern the workspace), once it has one.
            "policy-checks": {"data": [{"type": "policy-checks", "id": f"polchk-{task.id}"}]
                              if task.policy_status else []},
            "task-stages": {"data": []},
            "run-events": {"data": []},
        },
    }


def plan(task: Task) -> dict[str, Any]:
    status = plan_status(task.status, plan_done=_plan_done(task))
    token = signing.sign("plan-log", task.id)
    return {
        "id": f"plan-{task.id}", "type": "plans",
        "attributes": {
            "status": status,
            "has-changes": bool(task.has_changes),
            "log-read-url": signing.absolute(f"/api/v2/plans/plan-{task.id}/logs/{token}"),
            "status-timestamps": {},
            "generated-configuration": False,
            **_counts(task),
        },
        "relationships": {"run": ref("runs", f"run-{task.id}")},
    }


def apply(task: Task) -> dict[str, Any]:
    status = apply_status(task.status, confirmed=_confirmed(task))
    token = signing.sign("apply-log", task.id)
    counts = _counts(task) if task.status == RunStatus.APPLIED else dict.fromkeys(_counts(task), 0)
    return {
        "id": f"apply-{task.id}", "type": "applies",
        "attributes": {
            "status": status,
            "log-read-url": signing.absolute(f"/api/v2/applies/apply-{task.id}/logs/{token}"),
            "status-timestamps": {},
            **counts,
        },
        "relationships": {"run": ref("runs", f"run-{task.id}")},
    }


def state_version(sv: StateVersion) -> dict[str, Any]:
    token = signing.sign("state", sv.id)
    return {
        "id": f"sv-{sv.id}", "type": "state-versions",
        "attributes": {
            "serial": sv.serial,
            "lineage": sv.lineage,
            "md5": "",
            "size": sv.size,
            "created-at": _time(sv.created_at),
            "status": "finalized",
            "resources-processed": True,
            "hosted-state-download-url": signing.absolute(f"/api/v2/state-versions/sv-{sv.id}/download/{token}"),
            "hosted-json-state-download-url": None,
        },
        "relationships": {"workspace": ref("workspaces", f"ws-{sv.workspace_id}"),
                          "run": ref("runs", f"run-{sv.task_id}" if sv.task_id else None)},
    }


# Our policy check, by go-tfe's PolicyStatus. A check that never ended (its run cancelled
# while it ran) is `unreachable`.
_POLICY_STATUS = {PolicyStatus.CHECKING: "queued", PolicyStatus.PASSED: "passed",
                  PolicyStatus.SOFT_FAILED: "soft_failed", PolicyStatus.HARD_FAILED: "hard_failed",
                  PolicyStatus.OVERRIDDEN: "overridden"}


def policy_check_status(task: Task) -> str:
    if task.policy_status == PolicyStatus.CHECKING and task.status != RunStatus.POLICY_CHECKING:
        return "unreachable"
    return _POLICY_STATUS[PolicyStatus(task.policy_status)]


def policy_check(task: Task, check: PolicyCheck | None, user: Any) -> dict[str, Any]:
    results = check.results if check else []
    failed = [r for r in results if not r["passed"]]
    by_level = {level: sum(1 for r in failed if r["level"] == level) for level in EnforcementLevel.values}
    may = allowed_actions(user, task.workspace)
    return {
        "id": f"polchk-{task.id}", "type": "policy-checks",
        "attributes": {
            "status": policy_check_status(task),
            "scope": "organization",
            "result": {
                "result": not failed, "passed": len(results) - len(failed), "total-failed": len(failed),
                "hard-failed": by_level[EnforcementLevel.HARD_MANDATORY],
                "soft-failed": by_level[EnforcementLevel.SOFT_MANDATORY],
                "advisory-failed": by_level[EnforcementLevel.ADVISORY],
                "duration": int(check.duration_ms or 0) if check else 0, "sentinel": None,
            },
            "actions": {"is-overridable": task.policy_status == PolicyStatus.SOFT_FAILED},
            "permissions": {"can-override": Action.OVERRIDE_POLICY in may},
            "status-timestamps": {},
        },
        "relationships": {"run": ref("runs", f"run-{task.id}")},
    }


def policy_check_output(check: PolicyCheck | None) -> str:
    """The check as text, the way terraform prints a policy check's output."""
    if check is None:
        return "The policy check has not finished.\n"
    lines = []
    results = check.results
    failed = sum(1 for r in results if not r["passed"])
    lines.append(f"{len(results) - failed} of {len(results)} policies passed.\n")
    for r in results:
        mark = "pass" if r["passed"] else "FAIL"
        lines.append(f"  {mark}  {r['policy_set']}/{r['policy']} ({r['level']})")
        for text in ([r["error"]] if r["error"] else []) + r["deny"]:
            lines.append(f"        {text}")
        for text in r["warn"]:
            lines.append(f"        warning: {text}")
    if check.overridden_at is not None:
        who = check.overridden_by.username if check.overridden_by else "?"
        lines.append(f"\nOverridden by {who}: {check.override_reason}")
    return "\n".join(lines) + "\n"
