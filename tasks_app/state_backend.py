"""Terraform's `http` state backend, at /api/v1/workspaces/<id>/state (and .../state/lock).

Protocol (what Terraform's http backend client sends and understands):
- GET state: 200 with the state JSON, or 204 when the workspace has no state yet.
- POST state[?ID=<lock id>]: store a new state. Terraform adds `?ID=` with the ID of the
  lock it holds, and a Content-MD5 header of the body. Terraform accepts 200/201/204.
- LOCK with Terraform's lock info as JSON body ({"ID", "Operation", "Info", "Who",
  "Version", "Created", "Path"}): 200 when taken; 423 with the holder's lock info as body
  when someone else holds it.
- UNLOCK with the lock info (Terraform sends the ID it holds): 200, also when not locked.
- A lock belongs to the credential that took it (a job's, or a user's token: the same user
  with any of their tokens). LOCK with the holder's ID from anyone else: 423 with the
  holder's info, as for any taken lock; UNLOCK or POST ?ID= from anyone else: 409 / 423.
- Force-unlock (`admin` on the workspace, audited as `state.force_unlock`): an UNLOCK from
  a user token with an empty body (what `terraform force-unlock` sends through this
  backend: it has no lock info of its own), or an UNLOCK from an admin that names the held
  ID but does not hold the lock (newer clients, or `curl -X UNLOCK -d '{"ID": ...}'`).
  A job's credential never force-unlocks.

This is a plain Django view, not DRF: LOCK and UNLOCK are not HTTP methods DRF routes, and
Terraform speaks HTTP Basic, not `Authorization: Token`. The password is either a running
job's credential (the agents' terraform) or a user's API token (a person's own CLI); the
username is ignored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from agents_app.protocol import JobKind
from iacplatform import metrics
from iacplatform.auth import user_by_token
from iacplatform.permissions import REQUIRED, Action, Level, can, level
from tasks_app.dispatch.jobs import JOB_CREDENTIAL_PREFIX, job_by_credential
from tasks_app.dispatch.models import Job
from tasks_app.models import Workspace
from tasks_app.services.state import (
    StateConflictError,
    StateInvalidError,
    StateLockedError,
    StateTooLargeError,
    state_lock,
    state_pull,
    state_push,
    state_unlock,
)

STATE_METHODS = ("GET", "POST", "LOCK", "UNLOCK")
LOCK_METHODS = ("LOCK", "UNLOCK")
REALM = "iac-state"


@dataclass(frozen=True)
class StateClient:
    """Who is calling: a user (API token) or a running job (job credential)."""

    user: AbstractBaseUser | None
    job: Job | None

    @property
    def actor(self) -> Any:
        """What the audit log records: the user, or a label naming the job."""
        if self.job is not None:
            return f"{self.job.kind} job {self.job.id} (run {self.job.task_id})"
        return self.user


def _error(status: int, detail: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"detail": detail, **extra}, status=status)


def _unauthorized(detail: str) -> JsonResponse:
    response = _error(401, detail)
    # Without the challenge, clients (curl, browsers) do not know Basic auth is expected.
    response["WWW-Authenticate"] = f'Basic realm="{REALM}"'
    return response


def _basic_password(request: HttpRequest) -> str | None:
    """The password of an `Authorization: Basic ...` header, or None."""
    scheme, _, encoded = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _username, sep, password = decoded.partition(":")
    return password if sep and password else None


def _authenticate(password: str) -> StateClient | None:
    # A job credential says what it is ("job-..."; an API token is hex): one lookup, not two,
    # on every state call of every job.
    if password.startswith(JOB_CREDENTIAL_PREFIX):
        # job_by_credential only finds running jobs: a credential dies with its job.
        job = job_by_credential(password)
        return StateClient(user=None, job=job) if job is not None else None
    user = user_by_token(password)
    return StateClient(user=user, job=None) if user is not None else None


def _json_body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateInvalidError(f"the body is not valid JSON lock info: {exc}") from exc
    if not isinstance(body, dict):
        raise StateInvalidError("the body must be a JSON object (Terraform's lock info)")
    return body


def _get(workspace: Workspace) -> HttpResponse:
    data = state_pull(workspace=workspace)
    if data is None:
        # Terraform reads 204 (and 404) as "no state yet" and starts a new one.
        return HttpResponse(status=204)
    return HttpResponse(data, content_type="application/json")


def _post(request: HttpRequest, workspace: Workspace, client: StateClient) -> HttpResponse:
    if client.job is not None and client.job.kind != JobKind.APPLY:
        # Plans and warmups read and lock the state but never write it: refusing keeps a
        # leaked plan credential from replacing the state.
        return _error(403, f"a {client.job.kind} job cannot write state; only apply jobs can")
    limit = settings.IAC_MAX_STATE_BYTES
    # Refuse an oversized body before reading it into memory.
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if declared.isdigit() and int(declared) > limit:
        return _error(413, f"the state is {declared} bytes; the limit is {limit}")
    try:
        data = request.body
    except RequestDataTooBig:
        return _error(413, f"the state is bigger than the limit of {limit} bytes")
    content_md5 = request.headers.get("Content-MD5")
    if content_md5 and base64.b64encode(hashlib.md5(data).digest()).decode() != content_md5.strip():
        return _error(400, "the body does not match its Content-MD5 header: the upload was corrupted")
    version, created = state_push(
        workspace=workspace,
        data=data,
        lock_id=request.GET.get("ID") or None,
        actor=client.actor,
        task=client.job.task if client.job is not None else None,
        job=client.job,
    )
    return JsonResponse(
        {"serial": version.serial, "lineage": version.lineage, "sha256": version.sha256},
        status=201 if created else 200,
    )


def _lock(request: HttpRequest, workspace: Workspace, client: StateClient) -> HttpResponse:
    info = _json_body(request)
    lock = state_lock(workspace=workspace, info=info, actor=client.actor, job=client.job)
    return JsonResponse(lock.info)


def _unlock(request: HttpRequest, workspace: Workspace, client: StateClient) -> HttpResponse:
    if not request.body.strip():
        # No lock info: a force-unlock (`curl -X UNLOCK`), for people only. A job always
        # knows the ID it locked with, and must not break someone else's lock.
        if client.job is not None:
            return _error(400, "UNLOCK needs the lock info JSON with the lock ID")
        # `_dispatch` checked `admin` (Action.FORCE_UNLOCK) before coming here.
        unlocked = state_unlock(workspace=workspace, lock_id=None, actor=client.actor, may_force=True)
    else:
        lock_id = _json_body(request).get("ID")
        if not isinstance(lock_id, str) or not lock_id:
            return _error(400, 'the lock info needs a non-empty string "ID"')
        # Someone else's lock, named by its ID, is released only for an admin (a force-unlock).
        may_force = client.user is not None and can(client.user, Action.FORCE_UNLOCK, workspace)
        unlocked = state_unlock(workspace=workspace, lock_id=lock_id, actor=client.actor, job=client.job,
                                may_force=may_force)
    return JsonResponse({"detail": "unlocked" if unlocked else "the state was not locked"})


def _dispatch(request: HttpRequest, workspace_id: int, allowed: tuple[str, ...]) -> HttpResponse:
    if request.method not in allowed:
        response = _error(405, f"method {request.method} is not allowed here; use {', '.join(allowed)}")
        response["Allow"] = ", ".join(allowed)
        return response

    password = _basic_password(request)
    if password is None:
        return _unauthorized("HTTP Basic credentials are required: an API token or a job credential as password")
    client = _authenticate(password)
    if client is None:
        return _unauthorized("unknown or expired credentials")
    # Authenticate before looking the workspace up: strangers cannot probe which IDs exist.
    if client.job is not None:
        # A job credential is good for its own workspace only; to it, others do not exist.
        # (Its workspace came with it: no query of its own on terraform's every state call.)
        if client.job.task.workspace_id != workspace_id:
            return _error(404, f"workspace {workspace_id} does not exist")
        workspace = client.job.task.workspace
    else:
        workspace = Workspace.objects.filter(pk=workspace_id).first()
        have = level(client.user, workspace) if workspace is not None else Level.NONE
        if have < Level.READ:  # unreadable = nonexistent: the ID is not confirmed
            return _error(404, f"workspace {workspace_id} does not exist")
        # The raw state holds every secret of the infrastructure in clear: reading it needs
        # `write`, like changing it; a force-unlock (no lock info) needs `admin`.
        action = Action.READ_STATE if request.method == "GET" else Action.WRITE_STATE
        if request.method == "UNLOCK" and not request.body.strip():
            action = Action.FORCE_UNLOCK
        if not can(client.user, action, workspace):
            need = REQUIRED[action].name.lower()
            return _error(403, f"you need '{need}' on workspace '{workspace.name}' for {request.method} on its state; "
                               f"you have '{have.name.lower()}'")

    try:
        if request.method == "GET":
            return _get(workspace)
        if request.method == "POST":
            return _post(request, workspace, client)
        if request.method == "LOCK":
            return _lock(request, workspace, client)
        return _unlock(request, workspace, client)
    except StateLockedError as exc:
        # The body is the holder's lock info, the shape Terraform parses to report the holder.
        return JsonResponse(exc.info, status=423)
    except StateConflictError as exc:
        extra = {"lock": exc.lock_info} if exc.lock_info is not None else {}
        return _error(409, str(exc), **extra)
    except StateTooLargeError as exc:
        return _error(413, str(exc))
    except StateInvalidError as exc:
        return _error(400, str(exc))


def _timed_dispatch(request: HttpRequest, workspace_id: int, allowed: tuple[str, ...]) -> HttpResponse:
    """_dispatch, observed: latency by method and status; a 423 is a lock conflict."""
    started = time.perf_counter()
    response = _dispatch(request, workspace_id, allowed)
    metrics.observe_state_request(request.method or "", response.status_code, time.perf_counter() - started)
    return response


@csrf_exempt  # Terraform sends no CSRF token; auth is per request (Basic), not a session cookie.
def state_endpoint(request: HttpRequest, workspace_id: int) -> HttpResponse:
    return _timed_dispatch(request, workspace_id, STATE_METHODS)


@csrf_exempt
def state_lock_endpoint(request: HttpRequest, workspace_id: int) -> HttpResponse:
    return _timed_dispatch(request, workspace_id, LOCK_METHODS)
