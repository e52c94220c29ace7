"""Which commit a run is (read side): for the run page, the Confirm dialog, the REST and TFE APIs."""

from __future__ import annotations

from typing import Any

from tasks_app.models import ConfigurationVersion, Task, Workspace
from tasks_app.vcs.models import VcsReport


def commit_json(cv: ConfigurationVersion | None, workspace: Workspace | None = None) -> dict[str, Any] | None:
    """The commit a configuration was made from, None for an upload. `newer_commit`: the
    branch's newest commit the platform has seen, when it is another one (a Confirm would
    apply an older commit than the branch has)."""
    if cv is None or not cv.vcs_sha:
        return None
    newer = None
    if workspace is not None and not cv.speculative and cv.vcs_branch and workspace.vcs_last_sha \
            and workspace.vcs_last_sha != cv.vcs_sha and workspace.vcs_branch == cv.vcs_branch:
        newer = workspace.vcs_last_sha
    return {"repository": cv.vcs_repository, "branch": cv.vcs_branch or None, "tag": cv.vcs_tag or None,
            "sha": cv.vcs_sha, "message": cv.vcs_message, "author": cv.vcs_author,
            "commit_url": cv.vcs_commit_url or None, "pull_request": cv.vcs_pr_number,
            "pull_request_url": cv.vcs_pr_url or None, "speculative": cv.speculative,
            "fetched_by": cv.vcs_fetched_by, "newer_commit": newer}


def run_commit(task: Task) -> dict[str, Any] | None:
    return commit_json(task.configuration_version, task.workspace)


def run_report(task: Task) -> dict[str, Any] | None:
    """How reporting the run back to the forge goes (failures shown, never failing the run)."""
    report = VcsReport.objects.filter(task=task).first()
    if report is None:
        return None
    return {"sent_status": report.sent_status or None, "attempts": report.attempts,
            "last_error": report.last_error or None, "next_attempt_at": report.next_attempt_at,
            "last_sent_at": report.last_sent_at}
