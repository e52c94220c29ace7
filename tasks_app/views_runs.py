"""The run page: status, timeline, plan, jobs and the log (H1 of the live dashboard).
The Confirm dialog on it is rendered by tasks_app/views_confirm.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render

from iacplatform.errors import NotFound
from iacplatform.permissions import Action, allowed_actions, run_for
from tasks_app.models import Plan, Task
from tasks_app.selectors import LOG_PAGE_BYTES, LOG_TAIL_BYTES, run_log_read, run_log_tail, run_waiting_reason
from tasks_app.services.retention import log_pruned_note, plan_pruned_note
from tasks_app.services.runs import run_prepare
from tasks_app.states import FINAL, RunStatus
from tasks_app.views_confirm import confirm_dialog_context


def _task(request: HttpRequest, task_id: int) -> Task:
    try:
        return run_for(request.user, Action.READ, task_id)
    except NotFound as exc:
        raise Http404(str(exc)) from exc


def _ms_between(start: datetime | None, end: datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000)


@login_required
def run_detail(request: HttpRequest, task_id: int) -> HttpResponse:
    task = _task(request, task_id)
    allowed = {str(a) for a in allowed_actions(request.user, task.workspace)}
    if task.status == RunStatus.APPLY_PENDING and str(Action.CONFIRM) in allowed:
        # Opening the page of a run awaiting Confirm is the "Confirm dialog opened" trigger:
        # a warmup gets queued now, so the dir is likely warm by the time the user clicks.
        task = run_prepare(task_id=task.id)
    task = Task.objects.select_related("workspace__pool").get(id=task.id)
    plan = Plan.objects.filter(task=task).only("sha256", "size", "summary", "created_at").first()
    # Only the end of the log: a log may hold IAC_MAX_LOG_BYTES; the page links to the whole.
    log_text, log_start, log_offset = run_log_tail(task_id=task.id, size=LOG_TAIL_BYTES, log_size=task.log_size)
    context = {
        "task": task,
        "allowed": allowed,
        "workspace": task.workspace,
        "events": task.events.order_by("id"),
        "plan": plan,
        "summary": plan.summary if plan else {},
        "log_text": log_text,
        "log_offset": log_offset,
        "log_start": log_start,  # bytes of the log not shown (the download has them)
        "log_pruned": log_pruned_note(task),
        "plan_pruned": plan_pruned_note(task),
        "waiting_reason": run_waiting_reason(task),
        "is_final": task.status in FINAL,
        **confirm_dialog_context(task, allowed),
        "confirm_to_apply_ms": _ms_between(task.confirmed_at, task.apply_started_at),
        "confirm_to_first_log_ms": _ms_between(task.confirmed_at, task.first_apply_log_at),
        "jobs": task.jobs.select_related("agent").order_by("id"),
    }
    return render(request, "tasks_app/run_detail.html", context)


@login_required
def run_log_download(request: HttpRequest, task_id: int) -> StreamingHttpResponse:
    """The whole log of a run as text/plain, streamed a page at a time (never all in memory)."""
    task = _task(request, task_id)

    def pages() -> Iterator[bytes]:
        offset = 0
        while True:
            text, offset = run_log_read(task_id=task.id, offset=offset, limit=LOG_PAGE_BYTES)
            if not text:
                return
            yield text.encode()

    response = StreamingHttpResponse(pages(), content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="run-{task.id}.log"'
    response["X-Content-Type-Options"] = "nosniff"
    return response
