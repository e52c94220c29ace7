"""Reporting runs back to the forge: a commit status per workspace (`iac/<workspace>`) and,
for a pull request, one comment per workspace, edited as new plans arrive.

A VcsReport row is made with the run. The VCS tick sends a report whenever its run's status
differs from the one last sent; a failure (forge down, token revoked) is kept on the row
(shown on the run page) and tried again with back-off; it never touches the run. Everything
sent is masked with the workspace's sensitive values: statuses and comments are public."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from agents_app.ansi import strip_ansi
from agents_app.redaction import redact
from tasks_app.models import LogChunk, Plan, PolicyCheck, Task
from tasks_app.redaction import sensitive_values
from tasks_app.states import PolicyStatus, RunStatus
from tasks_app.vcs import forges
from tasks_app.vcs.models import HeldPullRequest, PullRequestComment, VcsReport

log = logging.getLogger(__name__)

BACKOFF_MAX_SECONDS = 600
HELD = "held"


def _backoff(attempts: int) -> float:
    return min(settings.IAC_VCS_REPORT_BACKOFF_SECONDS * 2 ** attempts, BACKOFF_MAX_SECONDS)


def reports_due() -> list[int]:
    now = timezone.now()
    return list(VcsReport.objects.filter(Q(next_attempt_at=None) | Q(next_attempt_at__lte=now))
                .filter(Q(task__isnull=False) & ~Q(sent_status=F("task__status"))
                        | Q(held__isnull=False) & ~Q(sent_status=HELD))
                .order_by("id").values_list("id", flat=True)[:100])


def summary_text(summary: dict | None) -> str:
    s = summary or {}
    return f"+{s.get('add', 0)} ~{s.get('change', 0)} -{s.get('destroy', 0)}"


def _first_error(task: Task) -> str:
    for chunk in LogChunk.objects.filter(task=task).order_by("offset").values_list("text", flat=True):
        for line in strip_ansi(chunk).splitlines():
            text = line.strip().lstrip("│╷╵ ").strip()
            if text.startswith("Error:"):
                return text
    return (task.message or "the run failed").splitlines()[0]


def _policy_results(task: Task) -> list[dict]:
    check = PolicyCheck.objects.filter(task=task).only("results").first()
    return check.results if check else []


def _policy_note(results: list[dict]) -> str:
    """What the forge's one-line description says of the run's policy check ("" if nothing
    failed): the failures by level, the first one named."""
    failed = [r for r in results if not r["passed"]]
    if not failed:
        return ""
    first = failed[0]
    levels = ", ".join(f"{sum(r['level'] == level for r in failed)} {level}"
                       for level in ("hard-mandatory", "soft-mandatory", "advisory")
                       if any(r["level"] == level for r in failed))
    return f"policies failed: {levels} ({first['policy_set']}/{first['policy']})"


def _status_of(task: Task) -> tuple[str, str]:
    """GitHub's state and the description for a run. A mandatory policy that failed makes a
    planned run's status a failure (what a pull request's reviewers must see before merging:
    its apply would wait for an override, or error); an advisory one is named, not failed."""
    plan = Plan.objects.filter(task=task).only("summary").first()
    changes = summary_text(plan.summary if plan else None)
    policies = _policy_note(_policy_results(task)) if task.policy_status else ""
    mandatory_failed = task.policy_status in (PolicyStatus.SOFT_FAILED, PolicyStatus.HARD_FAILED)
    match task.status:
        case RunStatus.PLANNED if mandatory_failed:
            return "failure", f"{changes}; {policies}"
        case RunStatus.PLANNED:
            return "success", f"{changes}; {policies}" if policies else changes
        case RunStatus.PLANNED_NO_CHANGES:
            return "success", "no changes"
        case RunStatus.APPLY_PENDING if task.policy_status == PolicyStatus.SOFT_FAILED:
            return "pending", f"{changes}; {policies}: Confirm waits for an admin's override"
        case RunStatus.APPLY_PENDING:
            return "pending", f"{changes}: waiting for Confirm"
        case RunStatus.APPLY_QUEUED | RunStatus.APPLYING:
            return "pending", f"{changes}: applying"
        case RunStatus.APPLIED:
            return "success", f"applied {changes}"
        case RunStatus.ERRORED:
            return "failure", _first_error(task)
        case RunStatus.DISCARDED | RunStatus.CANCELLED:
            return "error", (task.message or str(task.status)).splitlines()[0]
    return "pending", "planning"


def _run_url(task_id: int) -> str:
    return settings.IAC_PUBLIC_URL.rstrip("/") + reverse("run-detail", args=[task_id])


def report_send(*, report_id: int) -> bool:
    """Send what the forge has not been told yet. True when sent (or nothing to send)."""
    now = timezone.now()
    # The claim: one sender at a time, and a crash mid-send is retried after the lease.
    if not VcsReport.objects.filter(id=report_id).filter(
            Q(next_attempt_at=None) | Q(next_attempt_at__lte=now)).update(
            next_attempt_at=now + timedelta(seconds=60)):
        return False
    report = VcsReport.objects.select_related("task__workspace__vcs_connection", "task__configuration_version",
                                              "held__workspace__vcs_connection", "held__delivery").get(id=report_id)
    try:
        sent = _send_held(report.held) if report.held is not None else _send_run(report.task)
    except forges.ForgeError as exc:
        attempts = report.attempts + 1
        VcsReport.objects.filter(id=report.id).update(
            attempts=attempts, last_error=f"{timezone.now():%Y-%m-%d %H:%M:%S} UTC: {exc}",
            next_attempt_at=timezone.now() + timedelta(seconds=_backoff(attempts)))
        log.warning("report %s to the forge failed (attempt %s): %s", report.id, attempts, exc)
        return False
    VcsReport.objects.filter(id=report.id).update(sent_status=sent, attempts=0, next_attempt_at=None,
                                                  last_error="", last_sent_at=timezone.now())
    return True


def _send_held(held: HeldPullRequest) -> str:
    ws = held.workspace
    forges.status_set(ws.vcs_connection, repository=ws.vcs_repository, sha=held.sha, state="pending",
                      context=f"iac/{ws.name}", target_url=settings.IAC_PUBLIC_URL.rstrip("/") + reverse(
                          "workspace-detail", args=[ws.id]),
                      description=f"not planned: {held.reason}; someone with write on {ws.name} may allow it")
    return HELD


def _send_run(task: Task) -> str:
    status = task.status  # what is reported; a newer status is sent on the next tick
    ws, cv = task.workspace, task.configuration_version
    secrets = sensitive_values(ws.id)
    state, description = _status_of(task)
    description = redact(description, secrets)
    forges.status_set(ws.vcs_connection, repository=ws.vcs_repository, sha=cv.vcs_sha, state=state,
                      description=description, context=f"iac/{ws.name}", target_url=_run_url(task.id))
    if cv.vcs_pr_number and state != "pending":
        body = redact(_comment(task, state, description), secrets)
        existing = PullRequestComment.objects.filter(connection=ws.vcs_connection, repository=ws.vcs_repository,
                                                     number=cv.vcs_pr_number, workspace=ws).first()
        comment_id = forges.comment_upsert(ws.vcs_connection, repository=ws.vcs_repository, number=cv.vcs_pr_number,
                                           comment_id=existing.comment_id if existing else None, body=body)
        if existing is None:
            PullRequestComment.objects.get_or_create(
                connection=ws.vcs_connection, repository=ws.vcs_repository, number=cv.vcs_pr_number, workspace=ws,
                defaults={"comment_id": comment_id})
    return status


def _comment(task: Task, state: str, description: str) -> str:
    cv = task.configuration_version
    mark = {"success": "✅", "failure": "❌", "error": "⚠️"}.get(state, "⏳")
    body = (f"<!-- iac:workspace={task.workspace.name} -->\n"
            f"### {mark} iac/{task.workspace.name}: {description}\n\n"
            f"Speculative plan of commit `{cv.vcs_sha[:7]}` ({task.status}). "
            f"[Run {task.id}]({_run_url(task.id)})\n")
    results = _policy_results(task) if task.policy_status else []
    if results:
        body += "\n| policy | level | result |\n|---|---|---|\n"
        for r in results:
            said = r["error"] or "; ".join([*r["deny"][:3], *(f"warn: {w}" for w in r["warn"][:3])]) or ""
            verdict = ("✅ passed" if r["passed"] else "❌ failed") + (f": {_cell(said)}" if said else "")
            body += f"| {_cell(r['policy_set'])}/{_cell(r['policy'])} | {r['level']} | {verdict} |\n"
    return body


def _cell(text: str) -> str:
    """Text for one cell of a Markdown table: one line, no column break."""
    return " ".join(str(text).split()).replace("|", "\\|")[:300]
