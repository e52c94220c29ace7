"""The Confirm Apply dialog of the run page and the run actions beside it: confirm,
discard, cancel (H2 of the live dashboard).

The dialog is one fragment (`tasks_app/_confirm_dialog.html`, root `id="confirm-dialog"`),
rendered by `confirm_dialog_html` for every way it reaches the page: included in the run
page, fetched by its own `hx-get` (opening it asks for a warmup, as the page does), answered
to its htmx posts, and pushed by the run page's websocket on every run or dispatch change.
It shows facts the services already hold (`warmups.confirm_target`, the apply job, the
task's apply path); it never decides anything itself.

Without JavaScript the buttons are plain forms: the post redirects to the run page with a
message (a refusal for lack of permission, which only a forged post meets, is a 403 page).
With htmx the post is answered with the dialog itself, a refusal included (4xx, with the
reason inside the dialog: the dialog's `hx-on::before-swap` lets htmx swap those).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from agents_app.protocol import JobKind, JobStatus
from iacplatform.errors import Forbidden, NotFound, PlatformError
from iacplatform.permissions import Action, allowed_actions, require, run_for
from tasks_app.dispatch.models import Job
from tasks_app.dispatch.warmups import confirm_target
from tasks_app.models import Plan, PolicyCheck, Task
from tasks_app.page_access import readable_run
from tasks_app.selectors import ms_between
from tasks_app.services.runs import run_cancel, run_confirm, run_discard, run_policy_override, run_prepare
from tasks_app.states import FINAL, PolicyStatus, RunStatus
from tasks_app.vcs.commit import run_commit

# A response header the dialog's before-swap handler looks for: a 4xx carrying it is the
# dialog with a refusal inside, to be swapped in; any other error response is left alone.
DIALOG_HEADER = "X-Confirm-Dialog"


@dataclass
class WarmExplanation:
    warm: bool  # True: the apply is expected to start on the warm dir
    text: str


@dataclass
class Readiness:
    """Where a Confirm clicked now would start, as facts for the dialog."""

    kind: str  # ready | warming | queued | cold
    text: str  # the one-sentence explanation (warm_explanation)
    agent: str = ""
    slot: int | None = None
    since: datetime | None = None  # ready since / warming since / queued since
    expires: datetime | None = None  # the warm dir's reservation ends
    job_state: str = ""  # the warmup job's state
    wait_seconds: float | None = None  # how long a confirmed apply waits for a running warmup


def readiness(task: Task, *, now: datetime | None = None) -> Readiness:
    """What Confirm will do right now, in the words run_confirm uses to pick the path
    (warmups.confirm_target decides; this only gathers its facts)."""
    now = now or timezone.now()
    target = confirm_target(task, now=now)
    if target.slot is not None:
        expires = (
            f" (expires {timezone.localtime(task.warmup_expires_at):%Y-%m-%d %H:%M:%S %Z})"
            if task.warmup_expires_at
            else ""
        )
        return Readiness(
            "ready", f"Apply will start warm on agent {target.slot.agent.name}{expires}.",
            agent=target.slot.agent.name, slot=target.slot.index, since=task.warmup_at, expires=task.warmup_expires_at,
        )
    if target.wait_for is not None:
        wait = settings.IAC_WARMUP_WAIT_SECONDS
        job = (Job.objects.filter(task=task, kind=JobKind.WARMUP, status=JobStatus.RUNNING)
               .only("status", "slot_index", "claimed_at").order_by("-id").first())
        return Readiness(
            "warming",
            f"A warmup is running on agent {target.wait_for.name}: a confirmed apply starts there the moment "
            f"it is ready (it runs cold if that takes more than {wait:g}s or the warmup fails).",
            agent=target.wait_for.name, slot=job.slot_index if job else None,
            since=(job.claimed_at if job else None) or task.warmup_at,
            job_state=job.status if job else "", wait_seconds=wait,
        )
    # run_prepare (called when the dialog opens) may just have queued a warmup: say so.
    queued = (Job.objects.filter(task=task, kind=JobKind.WARMUP, status=JobStatus.QUEUED)
              .only("status", "created_at").order_by("-id").first())
    if queued is not None:
        return Readiness(
            "queued", "No warm dir yet: a warmup job is queued, waiting for an agent. Confirming now runs cold.",
            since=queued.created_at, job_state=queued.status,
        )
    return Readiness("cold", f"Apply will run cold: {target.cold_reason}.")


def warm_explanation(task: Task, *, now: datetime | None = None) -> WarmExplanation:
    """The readiness as one sentence (warm: the apply is expected to start on a warm dir)."""
    ready = readiness(task, now=now)
    return WarmExplanation(ready.kind in ("ready", "warming"), ready.text)


@dataclass
class ApplyProgress:
    """A confirmed run's apply: where it is going or went, and how fast it started."""

    headline: str
    agent: str = ""
    slot: int | None = None
    job_state: str = ""
    hold_until: datetime | None = None
    confirm_to_apply_ms: int | None = None
    confirm_to_first_log_ms: int | None = None



def apply_progress(task: Task) -> ApplyProgress:
    job = Job.objects.select_related("agent", "target_agent").filter(task=task, kind=JobKind.APPLY).first()
    timing = {
        "confirm_to_apply_ms": ms_between(task.confirmed_at, task.apply_started_at),
        "confirm_to_first_log_ms": ms_between(task.confirmed_at, task.first_apply_log_at),
    }
    if job is None:
        return ApplyProgress("Apply confirmed — its job is being created.", **timing)
    agent = job.agent.name if job.agent else (job.target_agent.name if job.target_agent else "")
    facts: dict[str, Any] = {"agent": agent, "slot": job.slot_index, "job_state": job.status, **timing}
    if task.status == RunStatus.APPLYING or task.apply_path:
        path = task.apply_path or "?"
        why = f" — {task.apply_path_reason}" if task.apply_path_reason else ""
        verb = "Applying" if task.status == RunStatus.APPLYING else "Applied"
        if task.status in FINAL and task.status != RunStatus.APPLIED:
            verb = f"Apply {task.status}"
        return ApplyProgress(f"{verb} on agent {agent} ({path} path{why}).", **facts)
    if job.status == JobStatus.RUNNING and job.agent is not None and not job.cold_reason:
        return ApplyProgress(f"Apply confirmed — starting warm on agent {agent}, slot {job.slot_index}.", **facts)
    if job.status == JobStatus.QUEUED and job.target_agent is not None and job.hold_until is not None:
        return ApplyProgress(
            f"Apply confirmed — waiting for the warmup on agent {agent}; it starts there the moment the dir is ready.",
            hold_until=job.hold_until, **facts,
        )
    if job.status == JobStatus.RUNNING:
        return ApplyProgress(f"Apply confirmed — starting cold on agent {agent}: {job.cold_reason}.", **facts)
    if job.status == JobStatus.QUEUED:
        return ApplyProgress(f"Apply confirmed — it will run cold: {job.cold_reason or 'no warm dir'}; "
                             "waiting for a free agent.", **facts)
    return ApplyProgress(f"Apply {job.status}{': ' + job.error if job.error else ''}.", **facts)


def dialog_phase(task: Task) -> str:
    """Which face of the dialog shows: pending (Confirm), confirmed (the apply on its way or
    running), done (a run that was confirmed and ended), or "" (no dialog)."""
    if task.status == RunStatus.APPLY_PENDING:
        return "pending"
    if task.status in (RunStatus.APPLY_QUEUED, RunStatus.APPLYING):
        return "confirmed"
    if task.status in FINAL and (task.confirmed_at or task.apply_path):
        return "done"
    return ""


def _policy_failures(task: Task) -> list[str]:
    check = PolicyCheck.objects.filter(task=task).only("results").first()
    out = []
    for r in check.results if check else []:
        if not r["passed"] and r["level"] != "advisory":
            out.append(f"{r['policy_set']}/{r['policy']} ({r['level']}): {r['error'] or '; '.join(r['deny'][:3])}")
    return out


def confirm_dialog_context(task: Task, allowed: set[str], *, notice: str = "", error: str = "") -> dict:
    """What the dialog partial (tasks_app/_confirm_dialog.html) needs."""
    phase = dialog_phase(task)
    pending = phase == "pending"
    plan = Plan.objects.filter(task=task).only("summary").first() if phase else None
    ready = readiness(task) if pending else None
    return {
        "phase": phase,
        "is_pending_apply": pending,
        "readiness": ready,
        "warm": WarmExplanation(ready.kind in ("ready", "warming"), ready.text) if ready else None,
        "apply": apply_progress(task) if phase in ("confirmed", "done") else None,
        "plan_summary": plan.summary if plan else None,
        # Which commit Confirm applies, and whether the branch has a newer one.
        "commit": run_commit(task) if pending else None,
        "can_confirm": str(Action.CONFIRM) in allowed,
        # A soft-mandatory policy failed: Confirm waits for an override (admin on the workspace).
        "policy_blocked": pending and task.policy_status == PolicyStatus.SOFT_FAILED,
        "policy_overridden": task.policy_status == PolicyStatus.OVERRIDDEN,
        "policy_failures": _policy_failures(task) if pending and task.policy_status else [],
        "can_override": str(Action.OVERRIDE_POLICY) in allowed,
        "can_discard": str(Action.DISCARD) in allowed,
        "can_cancel": str(Action.CANCEL) in allowed and task.status not in FINAL,
        "can_force_cancel": str(Action.FORCE_CANCEL) in allowed and task.status not in FINAL,
        # Refreshed by its own hx-get while something is on its way (the run page's websocket
        # pushes it too, when the page has one: the poll is the fallback).
        "poll": (pending and ready is not None and ready.kind in ("warming", "queued")) or phase == "confirmed",
        "notice": notice,
        "error": error,
    }


def confirm_dialog_html(task_id: int, user: Any, *, oob: bool = True, notice: str = "", error: str = "",
                        request: HttpRequest | None = None) -> str:
    """The dialog as an HTML fragment (root element `id="confirm-dialog"`), for the run page's
    websocket to swap in whenever the run or its warmup changes (tasks_app/consumers.py), and
    for the dialog's own htmx requests (`oob=False`: the response is the swap target)."""
    task = run_for(user, Action.READ, task_id)
    allowed = {str(a) for a in allowed_actions(user, task.workspace)}
    context = {"task": task, "allowed": allowed, "oob": oob, "fragment": True,
               **confirm_dialog_context(task, allowed, notice=notice, error=error)}
    return render_to_string("tasks_app/_confirm_dialog.html", context, request=request)


def _answer(request: HttpRequest, task_id: int, *, notice: str = "", error: str = "", status: int = 200) -> HttpResponse:
    """htmx: the dialog itself (a refusal inside it, with its 4xx status). A plain form: back
    to the run page with the message."""
    if request.htmx:
        html = confirm_dialog_html(task_id, request.user, oob=False, notice=notice, error=error, request=request)
        response = HttpResponse(html, status=status)
        response[DIALOG_HEADER] = "1"
        return response
    if error:
        messages.error(request, error)
    elif notice:
        messages.success(request, notice)
    return redirect("run-detail", task_id=task_id)


def _refused(request: HttpRequest, task: Task, exc: PlatformError) -> HttpResponse:
    if isinstance(exc, NotFound):
        raise Http404(str(exc)) from exc
    if isinstance(exc, Forbidden) and not request.htmx:
        # Only a forged post gets here (the dialog shows these buttons to those allowed):
        # a 403 page, not a redirect that would look like an answer to a click.
        return render(request, "tasks_app/confirm/refused.html", {"task": task, "error": str(exc)}, status=403)
    return _answer(request, task.id, error=str(exc), status=exc.status if 400 <= exc.status < 500 else 409)


@login_required
@require_GET
def run_confirm_dialog(request: HttpRequest, task_id: int) -> HttpResponse:
    """The dialog alone (its own `hx-get`). Opening it on a run waiting for Confirm asks for a
    warmup when the run is not warm, for those who may confirm (run_prepare, as the page)."""
    task = readable_run(request, task_id)
    if task.status == RunStatus.APPLY_PENDING and str(Action.CONFIRM) in {
        str(a) for a in allowed_actions(request.user, task.workspace)
    }:
        run_prepare(task_id=task.id)
    response = HttpResponse(confirm_dialog_html(task.id, request.user, oob=False, request=request))
    response[DIALOG_HEADER] = "1"
    return response


@login_required
@require_POST
def run_confirm_view(request: HttpRequest, task_id: int) -> HttpResponse:
    task = readable_run(request, task_id)
    try:
        require(request.user, Action.CONFIRM, task.workspace)
        result = run_confirm(task_id=task.id, actor=request.user, comment=request.POST.get("comment", ""))
    except PlatformError as exc:
        return _refused(request, task, exc)
    if result.refused:
        # A stale plan: the service discarded the run (Terraform would refuse the plan too).
        return _answer(request, task.id, error=f"Apply refused: {result.refused}", status=409)
    return _answer(request, task.id, notice="Apply confirmed.")


@login_required
@require_POST
def run_discard_view(request: HttpRequest, task_id: int) -> HttpResponse:
    task = readable_run(request, task_id)
    try:
        require(request.user, Action.DISCARD, task.workspace)
        run_discard(task_id=task.id, actor=request.user, comment=request.POST.get("comment", ""))
    except PlatformError as exc:
        return _refused(request, task, exc)
    return _answer(request, task.id, notice="Run discarded.")


@login_required
@require_POST
def run_cancel_view(request: HttpRequest, task_id: int) -> HttpResponse:
    task = readable_run(request, task_id)
    force = request.POST.get("force") == "1"
    try:
        require(request.user, Action.FORCE_CANCEL if force else Action.CANCEL, task.workspace)
        task = run_cancel(task_id=task.id, actor=request.user, force=force, comment=request.POST.get("comment", ""))
    except PlatformError as exc:
        return _refused(request, task, exc)
    if task.status == RunStatus.CANCELLED:
        return _answer(request, task.id, notice="Run cancelled.")
    # The order is pushed to the agent at once (runs.run_cancel); the run ends when terraform stops.
    return _answer(request, task.id, notice="Cancel requested: terraform is being interrupted; the run becomes "
                                            "cancelled when it stops.")


@login_required
@require_POST
def run_policy_override_view(request: HttpRequest, task_id: int) -> HttpResponse:
    """Override a soft-failed policy check from the dialog (admin on the workspace; the
    service checks it and audits the override with its reason)."""
    task = readable_run(request, task_id)
    try:
        run_policy_override(task_id=task.id, actor=request.user, reason=request.POST.get("reason", ""))
    except PlatformError as exc:
        return _refused(request, task, exc)
    return _answer(request, task.id, notice="Policy check overridden: the run may be confirmed.")
