"""JSON:API for the TFE door: documents, errors and request bodies, the bearer token, and
the headers terraform checks on every answer.

Every view is wrapped by `endpoint`: it authenticates `Authorization: Bearer <API token>`
(what the CLI sends from a `credentials` block, `TF_TOKEN_<host>` or `terraform login`),
maps the project's errors (iacplatform/errors.py) to `{"errors": [...]}` with their status,
and adds `TFP-API-Version`: terraform refuses a `cloud` block against an API below 2.5."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from iacplatform.auth import user_by_token
from iacplatform.errors import Invalid, NotFound, PlatformError
from tasks_app.dispatch.jobs import JOB_CREDENTIAL_PREFIX, job_by_credential

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.api+json"
API_VERSION = "2.5"
# go-tfe's AppName(): terraform prints it ("Running plan in Terraform Enterprise") and knows
# only this name and "HCP Terraform".
APP_NAME = "Terraform Enterprise"

TITLES = {400: "bad request", 401: "unauthorized", 403: "forbidden", 404: "not found", 405: "method not allowed",
          409: "conflict", 410: "gone", 413: "payload too large", 422: "invalid attribute", 500: "internal error"}


def with_headers(response: HttpResponse) -> HttpResponse:
    response["TFP-API-Version"] = API_VERSION
    response["TFP-AppName"] = APP_NAME
    return response


def document(data: Any, *, status: int = 200, meta: dict[str, Any] | None = None,
             included: list[dict[str, Any]] | None = None) -> HttpResponse:
    body: dict[str, Any] = {"data": data}
    if included:
        body["included"] = included
    if meta is not None:
        body["meta"] = meta
    return with_headers(HttpResponse(json.dumps(body), status=status, content_type=CONTENT_TYPE))


def no_content(status: int = 204) -> HttpResponse:
    return with_headers(HttpResponse(status=status))


def error(status: int, detail: str, *, pointer: str | None = None) -> HttpResponse:
    item: dict[str, Any] = {"status": str(status), "title": TITLES.get(status, "error"), "detail": detail}
    if pointer:
        item["source"] = {"pointer": pointer}
    return with_headers(HttpResponse(json.dumps({"errors": [item]}), status=status, content_type=CONTENT_TYPE))


def _platform_error(exc: PlatformError) -> HttpResponse:
    if isinstance(exc, Invalid):
        # A request that is well-formed JSON:API but whose values are refused: 422, as TFE answers.
        fields = exc.fields or {}
        pointer = f"/data/attributes/{next(iter(fields))}" if fields else None
        return error(422 if exc.status == 400 else exc.status, str(exc), pointer=pointer)
    return error(exc.status, str(exc))


def _token(request: HttpRequest) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = header.partition(" ")
    # Bearer: what terraform and the SDKs send; Token: what our REST API's clients send.
    if scheme.lower() not in ("bearer", "token") or not token.strip():
        return None
    return token.strip()


def bearer_user(request: HttpRequest) -> Any | None:
    token = _token(request)
    return user_by_token(token) if token else None


def _authenticate(request: HttpRequest, *, jobs: bool) -> bool:
    """Sets request.user (an API token's user) or, on `jobs` routes, request.tfe_job (a
    running job's credential, with an anonymous user: it passes no `can()` check). A job
    credential says what it is ("job-..."): one lookup, not two."""
    token = _token(request)
    if token is None:
        return False
    if token.startswith(JOB_CREDENTIAL_PREFIX):
        job = job_by_credential(token) if jobs else None
        if job is None:
            return False
        request.user = AnonymousUser()
        request.tfe_job = job  # type: ignore[attr-defined]
        return True
    user = user_by_token(token)
    if user is None:
        return False
    request.user = user
    return True


def endpoint(*methods: str, public: bool = False,
             jobs: bool = False) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """A TFE API view answering `methods`; `public`: no token (the signed URLs carry their
    own grant, the ping carries none); `jobs`: a running job's credential is accepted too
    (the reads terraform_remote_state makes: tasks_app/tfe/sharing.py)."""

    def wrap(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @csrf_exempt
        @functools.wraps(view)
        def handler(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                return error(405, f"{request.method} is not allowed here")
            if not public and not _authenticate(request, jobs=jobs):
                return error(401, "a valid API token is required: Authorization: Bearer <token>")
            try:
                return view(request, *args, **kwargs)
            except PlatformError as exc:
                return _platform_error(exc)

        return handler

    return wrap


# --- request bodies ----------------------------------------------------------------------------


class Body:
    """A JSON:API request document's `data`: its attributes and relationships, read with
    type checks that refuse (Invalid, naming the attribute) rather than coerce."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.attributes: dict[str, Any] = data.get("attributes") or {}
        self.relationships: dict[str, Any] = data.get("relationships") or {}
        if not isinstance(self.attributes, dict) or not isinstance(self.relationships, dict):
            raise Invalid("data.attributes and data.relationships must be objects")

    def _get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = self.attributes.get(name, default)
        if value is None:
            return default
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise Invalid(fields={name: [f"must be a {getattr(kind, '__name__', 'value')}"]})
        return value

    def bool(self, name: str, default: bool = False) -> bool:
        return self._get(name, bool, default)

    def str(self, name: str, default: str = "", *, max_length: int = 10_000) -> str:
        value = self._get(name, str, default)
        if len(value) > max_length or "\x00" in value:
            raise Invalid(fields={name: [f"at most {max_length} characters, no NUL"]})
        return value

    def str_list(self, name: str, *, max_items: int = 1000) -> list[str]:
        value = self._get(name, list, [])
        if len(value) > max_items or not all(isinstance(v, str) and v and "\x00" not in v for v in value):
            raise Invalid(fields={name: [f"must be a list of at most {max_items} non-empty strings"]})
        return value

    def related_id(self, name: str, *, required: bool = True) -> str | None:
        rel = self.relationships.get(name)
        data = rel.get("data") if isinstance(rel, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            if required:
                raise Invalid(fields={name: ["a relationship {\"data\": {\"type\": ..., \"id\": ...}} is required"]})
            return None
        return data["id"]


def body(request: HttpRequest, resource_type: str, *, required: bool = True) -> Body:
    """The request's JSON:API document for one resource of `resource_type`."""
    raw = request.body
    if not raw.strip():
        if required:
            raise Invalid("the request needs a JSON:API document: {\"data\": {\"type\": ..., \"attributes\": ...}}")
        return Body({})
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Invalid(f"the body is not JSON: {exc}") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        raise Invalid("the body must be a JSON:API document with a `data` object")
    if data.get("type") not in (resource_type, None):
        raise Invalid(f"data.type must be '{resource_type}'")
    return Body(data)


def parse_id(prefix: str, value: str) -> int:
    """`run-12` -> 12. Anything else is a resource that does not exist."""
    head, _, number = value.partition("-")
    if head != prefix or not number.isdigit() or len(number) > 18:
        raise NotFound(f"no such {prefix}")
    return int(number)


def page(request: HttpRequest, total: int, *, default_size: int = 20) -> tuple[slice, dict[str, Any]]:
    """`page[number]`/`page[size]` as TFE pages lists; go-tfe needs `meta.pagination` (it
    dereferences it to walk the pages)."""
    def number(name: str, default: int, top: int) -> int:
        raw = request.GET.get(name, "")
        return min(max(int(raw), 1), top) if raw.isdigit() else default

    size = number("page[size]", default_size, 100)
    pages = max(1, -(-total // size))
    current = number("page[number]", 1, pages)
    meta = {"pagination": {"current-page": current, "page-size": size, "prev-page": current - 1 if current > 1 else None,
                           "next-page": current + 1 if current < pages else None, "total-pages": pages,
                           "total-count": total}}
    return slice((current - 1) * size, current * size), meta
