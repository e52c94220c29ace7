"""How big a request body each route accepts, checked before anything reads the body.

Django's own `DATA_UPLOAD_MAX_MEMORY_SIZE` has one size for every route: big enough for a
state or a plan, it let an anonymous `POST /accounts/login/` make the CSRF check read and
parse a 100 MiB form. Here forms and JSON get IAC_MAX_REQUEST_BYTES everywhere, and only the
routes that carry uploads get the configured upload limits. Past its route's limit a request
is answered 413 with a message naming the limit, before the CSRF check (this middleware sits
before it) or the view reads a byte of it:

- with a Content-Length, by the header alone;
- without one (a chunked body), by reading at most one byte past the limit; the body read so
  far is then the request's body, as `HttpRequest.body` would have kept it.

Under ASGI the server and Django's handler have received the body before any middleware runs
(Django spools it to a temporary file past FILE_UPLOAD_MAX_MEMORY_SIZE, so that costs disk,
not memory); a reverse proxy's own body limit (nginx's `client_max_body_size`) keeps even that
away. The views keep their exact checks on what the body holds (a configuration's unpacked
size, a decoded plan): the limits here are on the body as sent, with room for its encoding.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, get_resolver


def _config_form(s: Any) -> int:
    # The page's multipart form: the archive and a few small fields around it.
    return s.IAC_MAX_CONFIG_BYTES + s.IAC_MAX_REQUEST_BYTES


def _config_api(s: Any) -> int:
    # A raw archive, or JSON `{"files": {...}}` whose escaping can double the text.
    return 2 * s.IAC_MAX_CONFIG_BYTES + s.IAC_MAX_REQUEST_BYTES


def _state(s: Any) -> int:
    # Terraform's http backend posts the state as is.
    return s.IAC_MAX_STATE_BYTES


def _state_inline(s: Any) -> int:
    # The TFE API's state version: the state in base64 (4/3 of it) inside JSON.
    return 2 * s.IAC_MAX_STATE_BYTES + s.IAC_MAX_REQUEST_BYTES


def _agent_plan(s: Any) -> int:
    # JSON with the plan in base64 (4/3 of it) and its summary.
    return 2 * s.IAC_MAX_PLAN_BYTES


def _agent_log(s: Any) -> int:
    # A log post's text, JSON-escaped.
    return 2 * s.IAC_MAX_LOG_BYTES


def _agent_finish(s: Any) -> int:
    # A job's result may carry its plan and its last log text.
    return _agent_plan(s) + _agent_log(s)


# Routes (by URL name) whose bodies are uploads, and how big they may be; every other route
# accepts IAC_MAX_REQUEST_BYTES. The agent routes authenticate before reading their body.
UPLOAD_ROUTES: dict[str, tuple[str, Callable[[Any], int]]] = {
    "workspace-configuration-upload": ("IAC_MAX_CONFIG_BYTES", _config_form),
    "api-configuration-version-list": ("IAC_MAX_CONFIG_BYTES", _config_api),
    "tfe-configuration-upload": ("IAC_MAX_CONFIG_BYTES", _config_api),
    "tfe-state-versions": ("IAC_MAX_STATE_BYTES", _state_inline),
    "state-backend": ("IAC_MAX_STATE_BYTES", _state),
    "agent-job-plan": ("IAC_MAX_PLAN_BYTES", _agent_plan),
    "agent-job-finish": ("IAC_MAX_PLAN_BYTES and IAC_MAX_LOG_BYTES", _agent_finish),
    "agent-job-logs": ("IAC_MAX_LOG_BYTES", _agent_log),
    "vcs-webhook": ("IAC_VCS_MAX_WEBHOOK_BYTES", lambda s: s.IAC_VCS_MAX_WEBHOOK_BYTES),
}


def body_limit(url_name: str | None) -> tuple[int, str]:
    """(bytes, the setting that sets it) for a route's request body."""
    route = UPLOAD_ROUTES.get(url_name or "")
    if route is None:
        return settings.IAC_MAX_REQUEST_BYTES, "IAC_MAX_REQUEST_BYTES"
    setting, limit = route
    return limit(settings), setting


def _size(n: int) -> str:
    return f"{n} bytes" if n < 1024 else f"{n / 1024:.0f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"


def too_large(request: HttpRequest, size: int | None, limit: int, setting: str) -> HttpResponse:
    sent = f"it is {_size(size)} and " if size is not None else ""
    message = f"Request body too large: {sent}the limit here is {_size(limit)} ({setting})."
    # The API, the agents and Terraform's state backend read JSON errors; people read text.
    if request.path.startswith(("/api/", "/agent/")):
        return JsonResponse({"detail": message}, status=413)
    return HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")


def _declared_length(request: HttpRequest) -> int | None:
    raw = request.META.get("CONTENT_LENGTH") or ""
    return int(raw) if raw.strip().isdigit() else None


def _capped_read(request: HttpRequest, limit: int) -> int | None:
    """Read a body that declared no length, at most one byte past `limit`. Within the limit it
    becomes the request's body (what `HttpRequest.body` does: the bytes, and a stream over
    them for request.POST and DRF's parsers) and its length is returned; past it, None."""
    data = request.read(limit + 1)
    if len(data) > limit:
        return None
    request._body = data  # type: ignore[attr-defined]
    request._stream = BytesIO(data)  # type: ignore[attr-defined]
    request._read_started = False  # type: ignore[attr-defined]
    # Django's multipart parser and DRF read nothing without a length.
    request.META["CONTENT_LENGTH"] = str(len(data))
    return len(data)


def refusal(request: HttpRequest) -> HttpResponse | None:
    """The 413 for a request whose body is past its route's limit; None when it may go on."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return None
    try:
        url_name = get_resolver(getattr(request, "urlconf", None)).resolve(request.path_info).url_name
    except Resolver404:
        url_name = None
    limit, setting = body_limit(url_name)
    declared = _declared_length(request)
    if declared is not None:
        return too_large(request, declared, limit, setting) if declared > limit else None
    if hasattr(request, "_body"):  # read already (a test client's request)
        return None
    if _capped_read(request, limit) is None:
        return too_large(request, None, limit, setting)
    return None


class RequestBodyLimitMiddleware:
    """Refuses a body past its route's limit (see the module's docstring), before the CSRF
    check and the view. Sync and async, without a thread hop for the async views (the API's
    long-polls): the check itself reads no more than the limit."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return refusal(request) or self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> Any:
        return refusal(request) or await self.get_response(request)
