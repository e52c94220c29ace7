"""The run page's parts, rendered for the first page load (tasks_app/views_runs.py) and again
as fragments for its websocket (tasks_app/consumers.py): each fragment's root element carries
the id it replaces and `hx-swap-oob`, so the htmx ws extension swaps it in.

The log is not here per viewer: a chunk's HTML is rendered once, by the producer
(tasks_app/events.py), and `log_fragment` only wraps it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.template.loader import render_to_string
from django.utils import timezone

from agents_app.models import Pod
from agents_app.redaction import plan_summary_masked
from iacplatform.permissions import Action, allowed_actions, run_for
from tasks_app.dispatch.models import Job
from tasks_app.models import Plan, PolicyCheck, Task
from tasks_app.redaction import sensitive_values
from tasks_app.selectors import duration_text, run_waiting_reason
from tasks_app.services.retention import plan_pruned_note
from tasks_app.states import FINAL, RunStatus
from tasks_app.vcs.commit import run_commit, run_report
from tasks_app.views_confirm import confirm_dialog_html, dialog_phase

# Which jobs ran which phase: the plan job runs `planning` (terraform init + plan), warmups run
# while the run is `apply_pending`, the apply job is queued and then runs `applying`.
PHASE_JOB_KINDS: dict[str, tuple[str, ...]] = {
    RunStatus.PLANNING: ("plan",),
    RunStatus.APPLY_PENDING: ("warmup",),
    RunStatus.APPLY_QUEUED: ("apply",),
    RunStatus.APPLYING: ("apply",),
}
ACTION_GROUPS = (("create", "to add", "+"), ("replace", "to replace", "±"), ("update", "to change", "~"),
                 ("delete", "to destroy", "-"))


@dataclass
class PhaseJob:
    job: Job
    agent: str
    pod: str
    slot: int | None


@dataclass
class Phase:
    status: str
    started_at: datetime
    ended_at: datetime | None  # None: the run is in this phase now
    actor: str
    message: str
    jobs: list[PhaseJob] = field(default_factory=list)

    @property
    def duration(self) -> str:
        end = self.ended_at or timezone.now()
        return duration_text(max(0.0, (end - self.started_at).total_seconds()))


def run_phases(task: Task) -> list[Phase]:
    """The run's phases from its TaskEvent rows (one per status it entered), each with how
    long it lasted and the jobs that ran in it (agent, pod, slot)."""
    events = list(task.events.order_by("id"))
    jobs = list(task.jobs.select_related("agent").order_by("id"))
    agent_ids = {j.agent_id for j in jobs if j.agent_id}
    pods = {p.agent_id: p.name for p in Pod.objects.filter(agent_id__in=agent_ids).order_by("created_at")}
    final = task.status in FINAL
    phases: list[Phase] = []
    for i, event in enumerate(events):
        nxt = events[i + 1].created_at if i + 1 < len(events) else None
        ended = nxt if nxt is not None else (event.created_at if final else None)
        phases.append(Phase(event.to_status, event.created_at, ended, event.actor, event.message))
    for job in jobs:
        # A job shows in the last phase of its kind that began before it was claimed (or
        # created, while still queued); the apply job in each of its phases.
        moment = job.claimed_at or job.created_at
        fitting = [p for p in phases if job.kind in PHASE_JOB_KINDS.get(p.status, ())]
        if job.kind != "apply":
            earlier = [p for p in fitting if p.started_at <= moment]
            fitting = earlier[-1:] or fitting[:1]
        for phase in fitting:
            phase.jobs.append(PhaseJob(job, job.agent.name if job.agent else "", pods.get(job.agent_id, ""),
                                       job.slot_index))
    return phases


def plan_groups(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's resources grouped by action (create, replace, update, delete), in that order."""
    groups: dict[str, list[dict]] = {key: [] for key, _, _ in ACTION_GROUPS}
    for res in summary.get("resources") or []:
        actions = res.get("actions") or []
        key = ("replace" if "create" in actions and "delete" in actions else
               "create" if "create" in actions else "update" if "update" in actions else
               "delete" if "delete" in actions else None)
        if key:
            groups[key].append(res)
    return [{"key": key, "label": label, "sign": sign, "resources": groups[key]}
            for key, label, sign in ACTION_GROUPS if groups[key]]


def run_context(task: Task, allowed: set[str]) -> dict[str, Any]:
    """What the status, timeline, plan, jobs, waiting and apply partials need."""
    plan = Plan.objects.filter(task=task).only("sha256", "size", "summary", "created_at").first()
    # A reader who may not read the raw state sees the workspace's sensitive values masked
    # wherever the run shows text a configuration or a person wrote (the plan, messages,
    # errors: the templates' `masked` filter), whatever the configuration declares.
    masked = None if str(Action.READ_STATE) in allowed else sensitive_values(task.workspace_id)
    summary = plan.summary if plan else {}
    if masked:
        summary = plan_summary_masked(summary, masked)
    return {
        "masked": masked,
        "task": task,
        "workspace": task.workspace,
        "allowed": allowed,
        "is_final": task.status in FINAL,
        "phases": run_phases(task),
        "plan": plan,
        "summary": summary,
        "plan_groups": plan_groups(summary),
        "plan_pruned": plan_pruned_note(task),
        "waiting_reason": run_waiting_reason(task),
        "jobs": task.jobs.select_related("agent").order_by("id"),
        # While the Confirm dialog shows (apply_pending, the apply, a confirmed run's end) it
        # carries the apply's path, its timings and Cancel: the page does not repeat them.
        "dialog_phase": dialog_phase(task),
        "commit": run_commit(task),
        "vcs_report": run_report(task),
        "policy_check": (PolicyCheck.objects.select_related("overridden_by").filter(task=task).first()
                         if task.policy_status else None),
    }



# The partials a run.changed / dispatch.changed event re-renders, each swapped by its id.
PARTS = ("status", "waiting", "policies", "actions", "timeline", "plan", "jobs")


def run_fragments_html(task_id: int, user: Any) -> str:
    """Every part of the run page but the log, as out-of-band fragments, plus the Confirm
    dialog. Raises NotFound when the user may no longer read the run."""
    task = run_for(user, Action.READ, task_id)
    task = Task.objects.select_related("workspace__pool", "created_by", "confirmed_by").get(id=task.id)
    allowed = {str(a) for a in allowed_actions(user, task.workspace)}
    context = {**run_context(task, allowed), "oob": True}
    html = [render_to_string(f"tasks_app/run/_{part}.html", context) for part in PARTS]
    dialog = confirm_dialog_html(task_id, user)
    # The dialog renders nothing when there is nothing to confirm: an empty element with its
    # id then takes the place of one still on the page.
    html.append(dialog if 'id="confirm-dialog"' in dialog else '<div id="confirm-dialog" hx-swap-oob="true"></div>')
    return "".join(html)


def log_fragment(html: str, end: int) -> str:
    """A piece of the log (already HTML) appended to the page's log element; `data-end` is the
    byte offset after it, which the page reconnects from (static/js/run.js)."""
    return (f'<div id="run-log" hx-swap-oob="beforeend"><span class="log-chunk" data-end="{end}">{html}</span></div>')
