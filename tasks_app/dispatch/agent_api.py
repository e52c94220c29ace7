"""The agent protocol: JSON over HTTP with bearer tokens (pool token to register, agent
token afterwards). Payloads are the typed messages of agents_app.protocol; the project's
errors map to status codes here, in one place (`agent_view`). Plain Django views: `claim`
is an async long-poll served by a bare ASGI app (tasks_app.dispatch.claim)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import pydantic
from channels.db import database_sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from agents_app.protocol import Heartbeat, JobResult, LogPost, PlanUpload, Registration
from agents_app.services.agents import agent_by_token, pool_by_token
from iacplatform.errors import Gone, Invalid, PlatformError
from tasks_app.dispatch import agent_reports, job_output, jobs
from tasks_app.dispatch.claim import NO_TOKEN, claim_longpoll, parse_max, parse_wait

log = logging.getLogger(__name__)
M = TypeVar("M", bound=pydantic.BaseModel)


def _error(status: int, detail: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"detail": detail, **extra}, status=status)


def error_response(exc: PlatformError) -> JsonResponse:
    extra = {"reregister": True} if isinstance(exc, Gone) else {}
    return _error(exc.status, str(exc), **extra)


def _bearer(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.startswith("Bearer ") else ""


def parse(model: type[M], raw: bytes) -> M:
    """The body as a protocol message; Invalid names the fields that are wrong."""
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Invalid(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise Invalid("body must be a JSON object")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in e['loc'])}': {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise Invalid(problems) from None


def _reply(message: pydantic.BaseModel, status: int = 200) -> JsonResponse:
    return JsonResponse(message.model_dump(mode="json"), status=status)


def agent_view(view: Callable) -> Callable:
    """Authenticate the agent token and map the project's errors to JSON 4xx responses.
    Anything else is a bug: logged, and a 500 (never a 400 the agent would give up on)."""

    @csrf_exempt
    @require_http_methods(["GET", "POST"])
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        agent = agent_by_token(_bearer(request))
        if agent is None:
            return _error(401, NO_TOKEN)
        try:
            return view(request, agent, *args, **kwargs)
        except PlatformError as exc:
            return error_response(exc)

    return wrapper


@csrf_exempt
@require_http_methods(["POST"])
def register(request: HttpRequest) -> HttpResponse:
    pool = pool_by_token(_bearer(request))
    if pool is None:
        return _error(401, "unknown or missing pool token (Authorization: Bearer <pool token>)")
    try:
        registration = parse(Registration, request.body)
        reply = agent_reports.agent_join(pool=pool, registration=registration)
    except PlatformError as exc:
        return error_response(exc)
    return _reply(reply, status=201)


@agent_view
def heartbeat(request: HttpRequest, agent: Any) -> HttpResponse:
    return _reply(agent_reports.agent_heartbeat(agent=agent, heartbeat=parse(Heartbeat, request.body)))


def _fence(request: HttpRequest) -> int:
    raw = request.headers.get("X-Job-Fence", "")
    if not raw.isdigit():
        raise Invalid("header X-Job-Fence (the job's fencing token) is required")
    return int(raw)


@agent_view
def configuration(request: HttpRequest, agent: Any, job_id: int) -> HttpResponse:
    data = jobs.job_configuration(agent=agent, job_id=job_id, fence=_fence(request))
    return HttpResponse(data, content_type="application/gzip")


@agent_view
def plan_file(request: HttpRequest, agent: Any, job_id: int) -> HttpResponse:
    data = jobs.job_plan_bytes(agent=agent, job_id=job_id, fence=_fence(request))
    return HttpResponse(data, content_type="application/octet-stream")


@csrf_exempt
@require_http_methods(["POST"])
def logs(request: HttpRequest, job_id: int) -> HttpResponse:
    # Not agent_view: the token is checked by the query that locks the job (job_log_by_token).
    try:
        if not agent_reports.job_log_by_token(token=_bearer(request), job_id=job_id, fence=_fence(request),
                                     post=parse(LogPost, request.body)):
            return _error(401, NO_TOKEN)
    except PlatformError as exc:
        return error_response(exc)
    return JsonResponse({"ok": True})


def _plan_bytes(upload: PlanUpload, field: str = "plan_b64") -> bytes:
    try:
        return base64.b64decode(upload.plan_b64, validate=True)
    except binascii.Error as exc:
        raise Invalid(f"field '{field}' is not valid base64: {exc}") from exc


@agent_view
def plan_upload(request: HttpRequest, agent: Any, job_id: int) -> HttpResponse:
    upload = parse(PlanUpload, request.body)
    job_output.job_upload_plan(
        agent=agent, job_id=job_id, fence=_fence(request), data=_plan_bytes(upload), sha256=upload.sha256,
        summary=upload.summary, has_changes=upload.has_changes,
    )
    return JsonResponse({"ok": True}, status=201)


@agent_view
def finish(request: HttpRequest, agent: Any, job_id: int) -> HttpResponse:
    result = parse(JobResult, request.body)
    plan = _plan_bytes(result.plan, "plan.plan_b64") if result.plan is not None else None
    plan_json = None
    if result.plan is not None and result.plan.json_gz_b64:
        try:
            plan_json = base64.b64decode(result.plan.json_gz_b64, validate=True)
        except binascii.Error as exc:
            raise Invalid(f"field 'plan.json_gz_b64' is not valid base64: {exc}") from exc
    reply = agent_reports.job_result(agent=agent, job_id=job_id, fence=_fence(request), result=result, plan=plan,
                                     plan_json=plan_json)
    # `jobs` only when there are some: {"keep_dir": ...} as before otherwise.
    return JsonResponse(reply.model_dump(mode="json", exclude_defaults=True))


@csrf_exempt
async def claim(request: HttpRequest) -> HttpResponse:
    """Long-poll for a job (see tasks_app.dispatch.claim; in production `claim_asgi` serves this URL
    without Django's middleware)."""
    if request.method != "POST":
        return _error(405, "use POST")
    agent = await database_sync_to_async(agent_by_token)(_bearer(request))
    if agent is None:
        return _error(401, NO_TOKEN)
    try:
        answer = await claim_longpoll(agent, parse_wait(request.GET.get("wait")), parse_max(request.GET.get("max")))
    except PlatformError as exc:
        return error_response(exc)
    return JsonResponse(answer.body()) if answer else HttpResponse(status=204)
