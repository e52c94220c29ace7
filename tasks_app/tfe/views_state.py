"""State through the TFE API: what `terraform state pull/push`, `terraform output` and
`import` do against a `cloud {}` workspace. The same state the http backend serves
(services/state.py): the same versions, the same serial and lineage checks, refused while
the http backend's lock is held by anyone (a running job included).

Reading the raw state (its current version, its download, a sensitive output's value) is
`write` (Action.READ_STATE), as everywhere; outputs are `read`, masked as the REST API
masks them (selectors.state_outputs)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from iacplatform.errors import Forbidden, Invalid, NotFound
from iacplatform.permissions import Action, can, require, workspace_for
from tasks_app.models import StateVersion, Workspace
from tasks_app.selectors import masked_values_for, state_outputs
from tasks_app.services.state import state_push
from tasks_app.tfe import resources, signing
from tasks_app.tfe.jsonapi import body, document, endpoint, page, parse_id
from tasks_app.tfe.sharing import job_may_read_state, request_job


def _workspace(request: HttpRequest, ident: str, action: Action) -> Workspace:
    return workspace_for(request.user, action, parse_id("ws", ident))


def _current(ws: Workspace) -> StateVersion | None:
    return StateVersion.objects.filter(workspace=ws).defer("encrypted_data").order_by("-serial", "-id").first()


def _readable_state(request: HttpRequest, ident: str) -> Workspace:
    """The workspace whose raw state the caller reads: `write` for a user (below it, a 404
    that init takes as no state: see current_state_version); for a job's credential, its
    own workspace or one that shares its state with it."""
    job = request_job(request)
    if job is None:
        ws = _workspace(request, ident, Action.READ)
        if not can(request.user, Action.READ_STATE, ws):
            raise NotFound(f"no state of workspace '{ws.name}' that you may read (that needs 'write')")
        return ws
    ws = Workspace.objects.filter(id=parse_id("ws", ident)).first()
    if ws is None or not job_may_read_state(job, ws):
        raise NotFound("no such workspace")
    return ws


@endpoint("GET", jobs=True)
def current_state_version(request: HttpRequest, ident: str) -> HttpResponse:
    """The current version and its download URL. `terraform init` reads it (for the
    providers the state needs); a caller below `write`, who may plan but not read the raw
    state, is told there is none that they may read: a 404, which init takes as "no state"
    (a 403 would stop their init, and with it their speculative plans)."""
    ws = _readable_state(request, ident)
    sv = _current(ws)
    if sv is None:
        raise NotFound(f"workspace '{ws.name}' has no state yet")
    return document(resources.state_version(sv))


@endpoint("GET")
def state_version(request: HttpRequest, ident: str) -> HttpResponse:
    sv = StateVersion.objects.defer("encrypted_data").select_related("workspace").filter(
        id=parse_id("sv", ident)).first()
    if sv is None:
        raise NotFound("no such state version")
    require(request.user, Action.READ_STATE, sv.workspace)
    return document(resources.state_version(sv))


@endpoint("GET", public=True)
def state_download(request: HttpRequest, ident: str, token: str) -> HttpResponse:
    """The raw state at the signed URL (handed out only to callers who may read it)."""
    sv_id = signing.unsign(token, "state")
    if sv_id != parse_id("sv", ident):
        raise NotFound("this URL is invalid or has expired")
    sv = StateVersion.objects.filter(id=sv_id).first()
    if sv is None:
        raise NotFound("no such state version")
    return HttpResponse(sv.data, content_type="application/json")


# go-tfe's StateVersions.Upload creates the version first without the state and PUTs it to
# upload URLs; on exactly this refusal it falls back to one POST with the state inline
# (base64), which is what we take: one request, checked and stored in one step.
INLINE_ONLY = "param is missing or the value is empty: state"


@endpoint("GET", "POST")
def state_versions(request: HttpRequest, ident: str) -> HttpResponse:
    if request.method == "GET":
        ws = _workspace(request, ident, Action.READ_STATE)
        versions = StateVersion.objects.filter(workspace=ws).defer("encrypted_data").order_by("-serial", "-id")
        window, meta = page(request, versions.count())
        return document([resources.state_version(sv) for sv in versions[window]], meta=meta)
    ws = _workspace(request, ident, Action.WRITE_STATE)
    data = body(request, "state-versions")
    encoded = data.str("state", max_length=2 * settings.IAC_MAX_STATE_BYTES)
    if not encoded:
        raise Invalid(INLINE_ONLY)
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(fields={"state": ["must be the state in base64"]}) from None
    md5 = data.str("md5", max_length=32)
    if md5 and hashlib.md5(raw).hexdigest() != md5.lower():  # noqa: S324  (a checksum the client computed)
        raise Invalid(fields={"md5": ["does not match the state"]})
    serial = data.attributes.get("serial")
    lineage = data.str("lineage", max_length=200)
    try:
        parsed = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    if isinstance(parsed, dict) and ((serial is not None and parsed.get("serial") != serial) or
                                     (lineage and parsed.get("lineage") != lineage)):
        raise Invalid(fields={"serial": ["serial and lineage must be those of the state"]})
    sv, _created = state_push(workspace=ws, data=raw, lock_id=None, actor=request.user)
    return document(resources.state_version(sv), status=201)


def _simple_type(detailed: Any) -> str:
    kind = detailed[0] if isinstance(detailed, list) and detailed else detailed
    return {"string": "string", "number": "number", "bool": "boolean", "list": "array", "tuple": "array",
            "set": "array", "map": "object", "object": "object"}.get(kind if isinstance(kind, str) else "", "string")


def _output(sv_id: int, index: int, out: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"wsout-{sv_id}-{index}", "type": "state-version-outputs",
            "attributes": {"name": out["name"], "sensitive": out["sensitive"], "type": _simple_type(out["type"]),
                           "value": out["value"], "detailed-type": out["type"]}}


@endpoint("GET", jobs=True)
def current_state_version_outputs(request: HttpRequest, ident: str) -> HttpResponse:
    # A job reads the raw state it may read anyway: its outputs unmasked.
    ws = _readable_state(request, ident) if request_job(request) else _workspace(request, ident, Action.READ)
    sv = _current(ws)
    if sv is None:
        raise NotFound(f"workspace '{ws.name}' has no state yet")
    outputs = state_outputs(ws.id, masked=None if request_job(request) else masked_values_for(request.user, ws))
    items = [_output(sv.id, i, out) for i, out in enumerate(outputs)]
    window, meta = page(request, len(items), default_size=100)
    return document(items[window], meta=meta)


@endpoint("GET", jobs=True)
def state_version_output(request: HttpRequest, ident: str) -> HttpResponse:
    """One output with its value, sensitive or not (terraform reads sensitive ones one by one)."""
    head, _, rest = ident.partition("-")
    sv_part, _, index = rest.partition("-")
    if head != "wsout" or not sv_part.isdigit() or not index.isdigit():
        raise NotFound("no such output")
    sv = StateVersion.objects.select_related("workspace").filter(id=int(sv_part)).first()
    if sv is None:
        raise NotFound("no such output")
    job = request_job(request)
    if job is not None:
        if not job_may_read_state(job, sv.workspace):
            raise NotFound("no such output")
        outputs = json.loads(sv.data).get("outputs") or {}
        named = sorted((name, out) for name, out in outputs.items() if isinstance(out, dict))
        if int(index) >= len(named):
            raise NotFound("no such output")
        name, out = named[int(index)]
        return document(_output(sv.id, int(index), {"name": name, "sensitive": bool(out.get("sensitive")),
                                                     "type": out.get("type"), "value": out.get("value")}))
    require(request.user, Action.READ, sv.workspace)
    outputs = json.loads(sv.data).get("outputs") or {}
    named = sorted((name, out) for name, out in outputs.items() if isinstance(out, dict))
    if int(index) >= len(named):
        raise NotFound("no such output")
    name, out = named[int(index)]
    if out.get("sensitive") and not can(request.user, Action.READ_STATE, sv.workspace):
        raise Forbidden(f"you need 'write' on workspace '{sv.workspace.name}' to read a sensitive output")
    shown = {"name": name, "sensitive": bool(out.get("sensitive")), "type": out.get("type"),
             "value": out.get("value")}
    if not out.get("sensitive"):
        masked = masked_values_for(request.user, sv.workspace)
        if masked is not None:
            current = [o for o in state_outputs(sv.workspace_id, masked=masked) if o["name"] == name]
            shown["value"] = current[0]["value"] if current and _current(sv.workspace).id == sv.id else None
    return document(_output(sv.id, int(index), shown))

