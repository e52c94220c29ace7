"""The agent protocol: JSON over HTTP with bearer tokens (pool token to register, agent
token afterwards). Plain Django views: `claim` is an async long-poll, which DRF does not do."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from agents_app.claim import NO_TOKEN, claim_longpoll, parse_wait
from agents_app.services.agents import (
    agent_by_token,
    agent_heartbeat,
    agent_register,
    pool_by_token,
)
from iacplatform.api_errors import Conflict
from tasks_app.services import jobs


def _error(status: int, detail: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"detail": detail, **extra}, status=status)


def _bearer(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.startswith("Bearer ") else ""


def _json(request: HttpRequest) -> dict:
    try:
        data = json.loads(request.body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


def _field(data: dict, name: str, kind: type, default: Any = ...) -> Any:
    if name not in data:
        if default is ...:
            raise ValueError(f"field '{name}' is required")
        return default
    value = data[name]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"field '{name}' must be {kind.__name__}")
    return value


def agent_view(view: Callable) -> Callable:
    """Authenticate the agent token and map service errors to JSON 4xx responses."""

    @csrf_exempt
    @require_http_methods(["GET", "POST"])
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        agent = agent_by_token(_bearer(request))
        if agent is None:
            return _error(401, NO_TOKEN)
        try:
            return view(request, agent, *args, **kwargs)
        except ValueError as exc:
            return _error(400, str(exc))
        except Conflict as exc:
            return _error(409, str(exc.detail))
        except jobs.AgentGone as exc:
            return _error(410, str(exc), reregister=True)

    return wrapper


@csrf_exempt
@require_http_methods(["POST"])
def register(request: HttpRequest) -> HttpResponse:
    pool = pool_by_token(_bearer(request))
    if pool is None:
        return _error(401, "unknown or missing pool token (Authorization: Bearer <pool token>)")
    try:
        data = _json(request)
        name = _field(data, "name", str)
        slots = _field(data, "slots", int, pool.slots_per_pod)
        if not 1 <= slots <= 16:
            raise ValueError("field 'slots' must be between 1 and 16")
    except ValueError as exc:
        return _error(400, str(exc))
    agent, token = agent_register(pool=pool, name=name, slot_count=slots, version=str(data.get("version", "")))
    return JsonResponse(
        {
            "agent_id": agent.id,
            "token": token,
            "pool": pool.name,
            "heartbeat_interval": settings.IAC_AGENT_HEARTBEAT_SECONDS,
            "claim_wait": settings.IAC_CLAIM_LONGPOLL_SECONDS,
        },
        status=201,
    )


@agent_view
def heartbeat(request: HttpRequest, agent: Any) -> HttpResponse:
    data = _json(request)
    warm_dirs = _field(data, "warm_dirs", list, [])
    running = _field(data, "running_jobs", list, [])
    return JsonResponse(agent_heartbeat(agent=agent, warm_dirs=warm_dirs, running_jobs=running))


@csrf_exempt
async def claim(request: HttpRequest) -> HttpResponse:
    """Long-poll for a job (see agents_app.claim; in production `claim_asgi` serves this URL
    without Django's middleware)."""
    if request.method != "POST":
        return _error(405, "use POST")
    agent = await database_sync_to_async(agent_by_token)(_bearer(request))
    if agent is None:
        return _error(401, NO_TOKEN)
    try:
        wait = parse_wait(request.GET.get("wait"))
    except ValueError as exc:
        return _error(400, str(exc))
    try:
        job = await claim_longpoll(agent, wait)
    except jobs.AgentGone as exc:
        return _error(410, str(exc), reregister=True)
    return JsonResponse(job) if job is not None else HttpResponse(status=204)


def _fence(request: HttpRequest) -> int:
    raw = request.headers.get("X-Job-Fence", "")
    if not raw.isdigit():
        raise ValueError("header X-Job-Fence (the job's fencing token) is required")
    return int(raw)


@agent_view
def configuration(request: HttpRequest, agent: Any, job_id: int) -> HttpResponse:
    data = jobs.job_configuration(agent=agent, job_id=job_id, fence=_fence(request))
    return HttpResponse(data, content_type="application/gzip")


@agent_view
def plan_file(request: HttpRequest, agent: Any, job_id: int) -> HttpResponse:
    data = jobs.job_plan_bytes(agent=agent, job_id=job_id, fence=_fence(request))
    return HttpResponse(data, content_type="application/octet-stream")


@agent_view
def logs(request: HttpRequest, agent: Any, job_id: int) -> HttpResponse:
    data = _json(request)
    jobs.job_append_log(
        agent=agent,
        job_id=job_id,
        fence=_fence(request),
        seq=_field(data, "seq", int),
        text=_field(data, "text", str, ""),
        events=_field(data, "events", dict, {}),
    )
    return JsonResponse({"ok": True})


@agent_view
def plan_upload(request: HttpRequest, agent: Any, job_id: int) -> HttpResponse:
    data = _json(request)
    try:
        raw = base64.b64decode(_field(data, "plan_b64", str), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"field 'plan_b64' is not valid base64: {exc}") from exc
    jobs.job_upload_plan(
        agent=agent,
        job_id=job_id,
        fence=_fence(request),
        data=raw,
        sha256=_field(data, "sha256", str),
        summary=_field(data, "summary", dict, {}),
        has_changes=_field(data, "has_changes", bool),
    )
    return JsonResponse({"ok": True}, status=201)


@agent_view
def finish(request: HttpRequest, agent: Any, job_id: int) -> HttpResponse:
    data = _json(request)
    result = jobs.job_finish(
        agent=agent,
        job_id=job_id,
        fence=_fence(request),
        ok=_field(data, "ok", bool),
        error=_field(data, "error", str, ""),
        kept_dir=_field(data, "kept_dir", bool, False),
        cancelled=_field(data, "cancelled", bool, False),
        stale=_field(data, "stale", bool, False),
    )
    return JsonResponse(result)
