"""The run page: status, timeline, plan, jobs and the log (H1 of the live dashboard).
The Confirm dialog on it is rendered by tasks_app/views_confirm.py."""

from __future__ import annotations

from collections.abc import Iterator

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils.safestring import mark_safe

from iacplatform.permissions import Action, allowed_actions
from tasks_app.logrender import log_html
from tasks_app.models import Task
from tasks_app.page_access import readable_run
from tasks_app.run_page import run_context
from tasks_app.selectors import LOG_PAGE_BYTES, LOG_TAIL_BYTES, run_log_read, run_log_tail
from tasks_app.services.retention import log_pruned_note
from tasks_app.services.runs import run_prepare
from tasks_app.states import RunStatus
from tasks_app.views_confirm import confirm_dialog_context


@login_required
def run_detail(request: HttpRequest, task_id: int) -> HttpResponse:
    task = readable_run(request, task_id)
    allowed = {str(a) for a in allowed_actions(request.user, task.workspace)}
    if task.status == RunStatus.APPLY_PENDING and str(Action.CONFIRM) in allowed:
        # Opening the page of a run awaiting Confirm is the "Confirm dialog opened" trigger:
        # a warmup gets queued now, so the dir is likely warm by the time the user clicks.
        task = run_prepare(task_id=task.id)
    task = Task.objects.select_related("workspace__pool", "created_by", "confirmed_by").get(id=task.id)
    # Only the end of the log: a log may hold IAC_MAX_LOG_BYTES; the page links to the whole.
    log_text, log_start, log_offset = run_log_tail(task_id=task.id, size=LOG_TAIL_BYTES, log_size=task.log_size,
                                                   ansi=True)
    log_pruned = log_pruned_note(task)
    context = {
        **run_context(task, allowed),
        "log_text": log_text,
        "log_html": mark_safe(log_html(log_text)),  # noqa: S308 - ansi2html escapes the text
        "log_offset": log_offset,
        "log_start": log_start,  # bytes of the log not shown (the download has them)
        "log_pruned": log_pruned,
        # A pruned log has nothing more to show; any other run's page follows it live (a final
        # run too: its last chunks and events may still be on their way).
        "live": not log_pruned,
        **confirm_dialog_context(task, allowed),
    }
    return render(request, "tasks_app/run_detail.html", context)


@login_required
def run_log_download(request: HttpRequest, task_id: int) -> StreamingHttpResponse:
    """The whole log of a run as text/plain, streamed a page at a time (never all in memory)."""
    task = readable_run(request, task_id)

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
