"""The TFE API v2 views: parse, call a service, render (tasks_app/tfe/resources.py). Every
route is behind the same `can()` as the rest of the platform (iacplatform/permissions.py):
a workspace the caller cannot read answers 404, an action above their level 403 with our
words, which terraform prints."""

from __future__ import annotations

import json
import re
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from agents_app.ansi import strip_ansi
from agents_app.protocol import JobKind, PlanMode
from iacplatform import wakeups
from iacplatform.errors import Conflict, Forbidden, Invalid, NotFound
from iacplatform.permissions import Action, readable_workspaces, require, run_for, workspace_for
from tasks_app.models import ConfigurationUpload, LogChunk, PolicyCheck, Task, Workspace
from tasks_app.serializers import ADDRESS_PATTERN
from tasks_app.services.configs import VCS_APPLY_REFUSED
from tasks_app.services.configuration_uploads import configuration_upload_create, configuration_upload_receive
from tasks_app.services.runs import run_cancel, run_confirm, run_create, run_discard, run_policy_override
from tasks_app.services.workspaces import (
    workspace_create,
    workspace_remote_state_consumers_change,
    workspace_tag_bindings_add,
    workspace_tags_change,
    workspace_update,
)
from tasks_app.states import Operation
from tasks_app.tfe import resources, signing
from tasks_app.tfe.jsonapi import body, document, endpoint, error, no_content, page, parse_id
from tasks_app.tfe.sharing import job_may_read_state, request_job
from tasks_app.tfe.statuses import (
    RUN_STATUS_BACK,
    TfePhaseStatus,
    TfeRunStatus,
    apply_status,
    phase_done,
    plan_status,
)

# --- meta ------------------------------------------------------------------------------------


@endpoint("GET", "HEAD", public=True)
def ping(request: HttpRequest) -> HttpResponse:
    """go-tfe reads TFP-API-Version from this answer's headers (and nothing else)."""
    return no_content()


def well_known(request: HttpRequest) -> HttpResponse:
    """Service discovery (terraform reads it over https only; over http a CLI config `host`
    block names the services instead: README "From the terraform CLI")."""
    return JsonResponse({"tfe.v2": "/api/v2/", "tfe.v2.1": "/api/v2/", "tfe.v2.2": "/api/v2/",
                         "state.v2": "/api/v2/"})


@endpoint("GET")
def account_details(request: HttpRequest) -> HttpResponse:
    """Whose token this is: `terraform login` shows the name after checking a pasted token."""
    user = request.user
    return document({"id": f"user-{user.pk}", "type": "users",
                     "attributes": {"username": user.get_username(), "email": user.email or "",
                                    "is-service-account": False}})


def _organization(name: str) -> None:
    if name != resources.organization_name():
        raise NotFound(f"no organization '{name}'")


@endpoint("GET", jobs=True)
def organization(request: HttpRequest, org: str) -> HttpResponse:
    _organization(org)
    return document(resources.organization())


@endpoint("GET", jobs=True)
def entitlement_set(request: HttpRequest, org: str) -> HttpResponse:
    _organization(org)
    return document(resources.entitlement_set())


@endpoint("GET")
def run_queue(request: HttpRequest, org: str) -> HttpResponse:
    """The organization's queue. Empty: a run waiting on our side says why on its own page
    (and the CLI then just says it waits for the plan to start)."""
    _organization(org)
    window, meta = page(request, 0)
    return document([], meta=meta)


# --- workspaces --------------------------------------------------------------------------------


def _workspace_by_id(request: HttpRequest, ident: str, action: Action) -> Workspace:
    return workspace_for(request.user, action, parse_id("ws", ident))


@endpoint("GET", "POST", jobs=True)
def organization_workspaces(request: HttpRequest, org: str) -> HttpResponse:
    _organization(org)
    job = request_job(request)
    if job is not None:
        # terraform_remote_state's backend creates a workspace it cannot read: say why instead.
        raise Forbidden(f"a run of workspace '{job.task.workspace.name}' may read only the state of workspaces "
                        f"that share theirs with it (remote state sharing, set by their admins)")
    if request.method == "POST":
        data = body(request, "workspaces")
        name = data.str("name", max_length=100)
        mode = data.str("execution-mode", "remote", max_length=20)
        if mode not in ("remote", "agent"):
            raise Invalid(fields={"execution-mode": ["only remote execution (on the platform's agents) is offered"]})
        ws = workspace_create(name=name, actor=request.user, tags=_tag_names(data),
                              tag_bindings=_tag_bindings(data.relationships.get("tag-bindings")))
        return document(resources.workspace(ws, request.user), status=201)
    workspaces = readable_workspaces(request.user).select_related("pool").order_by("name")
    search = request.GET.get("search[name]", "")
    if search:
        workspaces = workspaces.filter(name__icontains=search)
    # `cloud { workspaces { tags = [...] } }`: the workspaces that have all of them (a key of
    # their key-value tags counts: the CLI sends a map's keys here too, for servers without them).
    for tag in filter(None, request.GET.get("search[tags]", "").split(",")):
        workspaces = workspaces.filter(Q(tags__contains=[tag.strip()]) | Q(tag_bindings__has_key=tag.strip()))
    # `tags = { env = "prod" }`: filter[tagged][i][key] and [value], each pair to match.
    tagged: dict[str, dict[str, str]] = {}
    for param, value in request.GET.items():
        if m := TAGGED.fullmatch(param):
            tagged.setdefault(m["index"], {})[m["part"]] = value
    for pair in tagged.values():
        key, value = pair.get("key", ""), pair.get("value", "")
        if not key:
            raise Invalid("filter[tagged][…][value] without its [key]")
        workspaces = workspaces.filter(Q(tag_bindings__contains={key: value}) if value
                                       else Q(tag_bindings__has_key=key) | Q(tags__contains=[key]))
    window, meta = page(request, workspaces.count())
    return document([resources.workspace(ws, request.user) for ws in workspaces[window]], meta=meta)


@endpoint("GET", jobs=True)
def organization_workspace(request: HttpRequest, org: str, name: str) -> HttpResponse:
    _organization(org)
    ws = Workspace.objects.select_related("pool").filter(name=name).first()
    if ws is None:
        raise NotFound("no such workspace")
    job = request_job(request)
    if job is not None:
        if not job_may_read_state(job, ws):
            raise NotFound(f"no such workspace (or it does not share its state with workspace "
                           f"'{job.task.workspace.name}')")
    else:
        require(request.user, Action.READ, ws)
    return document(resources.workspace(ws, request.user))


@endpoint("GET", "PATCH")
def workspace(request: HttpRequest, ident: str) -> HttpResponse:
    ws = _workspace_by_id(request, ident, Action.READ)
    if request.method == "PATCH":
        data = body(request, "workspaces")
        changes: dict[str, Any] = {}
        if "auto-apply" in data.attributes:
            changes["auto_apply"] = data.bool("auto-apply")
        # `terraform-version`: the CLI PATCHes its own version into every workspace it
        # creates. It is ignored: our workspaces run whatever version their pool's agents run
        # unless an admin pins one, and a version no agent runs would strand every run.
        if changes:
            ws = workspace_update(workspace=ws, actor=request.user, changes=changes)
    return document(resources.workspace(ws, request.user))


@endpoint("POST")
def workspace_action(request: HttpRequest, ident: str, action: str) -> HttpResponse:
    """lock / unlock / force-unlock act on `Workspace.locked` (no new runs start), the lock
    TFE has; the state lock of the http backend is terraform's own and its holder's."""
    ws = _workspace_by_id(request, ident, Action.READ)
    if action == "lock":
        if ws.locked:
            raise Conflict(f"workspace '{ws.name}' is already locked")
        ws = workspace_update(workspace=ws, actor=request.user, changes={"locked": True})
    elif action in ("unlock", "force-unlock"):
        if action == "force-unlock":
            require(request.user, Action.FORCE_UNLOCK, ws)
        if not ws.locked:
            raise Conflict(f"workspace '{ws.name}' is not locked")
        ws = workspace_update(workspace=ws, actor=request.user, changes={"locked": False})
    else:
        raise NotFound(f"no workspace action '{action}'")
    return document(resources.workspace(ws, request.user))


TAGGED = re.compile(r"filter\[tagged\]\[(?P<index>\d{1,3})\]\[(?P<part>key|value)\]")


def _tag_bindings(rel: Any) -> dict[str, str]:
    """Key-value tags of a body's `data` list (PATCH tag-bindings) or a create's `tag-bindings`
    relationship: [{"type": "tag-bindings", "attributes": {"key": …, "value": …}}, …]."""
    items = rel.get("data") if isinstance(rel, dict) else rel
    if items is None:
        return {}
    bindings = {}
    for item in items if isinstance(items, list) else [None]:
        attributes = item.get("attributes") if isinstance(item, dict) else None
        key = attributes.get("key") if isinstance(attributes, dict) else None
        value = attributes.get("value", "") if isinstance(attributes, dict) else None
        if not isinstance(key, str) or not isinstance(value, str | None):
            raise Invalid('tag bindings are [{"type": "tag-bindings", "attributes": {"key": "…", "value": "…"}}, …]')
        bindings[key] = value or ""
    return bindings


def _binding_resources(ws: Workspace, kind: str) -> list[dict[str, Any]]:
    """The workspace's key-value tags and, as keys alone, its other tags (a `tags = [...]`
    block checks its keys among the bindings)."""
    keys = {**{tag: "" for tag in ws.tags}, **ws.tag_bindings}
    return [{"id": f"tb-{ws.id}-{i}", "type": kind, "attributes": {"key": k, "value": v}}
            for i, (k, v) in enumerate(sorted(keys.items()))]


@endpoint("GET", "PATCH")
def workspace_tag_bindings(request: HttpRequest, ident: str) -> HttpResponse:
    """GET the workspace's key-value tags; PATCH adds them, or changes the value of keys it
    has (`admin`)."""
    ws = _workspace_by_id(request, ident, Action.READ)
    if request.method == "PATCH":
        try:
            doc = json.loads(request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise Invalid("the body is not JSON") from None
        ws = workspace_tag_bindings_add(workspace=ws, actor=request.user,
                                        bindings=_tag_bindings(doc if isinstance(doc, dict) else None) or {})
    return document(_binding_resources(ws, "tag-bindings"))


@endpoint("GET")
def workspace_effective_tag_bindings(request: HttpRequest, ident: str) -> HttpResponse:
    """The workspace's tags as they apply to it (there are no projects to inherit from)."""
    return document(_binding_resources(_workspace_by_id(request, ident, Action.READ), "effective-tag-bindings"))


def _tag_names(data: Any) -> list[str]:
    """Tag names of a workspace create: `tag-names`, or go-tfe's `tags` relationship."""
    names = data.str_list("tag-names", max_items=100)
    rel = data.relationships.get("tags")
    items = rel.get("data") if isinstance(rel, dict) else None
    for item in items if isinstance(items, list) else []:
        name = (item.get("attributes") or {}).get("name") if isinstance(item, dict) else None
        if isinstance(name, str):
            names.append(name)
    return names


@endpoint("GET", "POST", "DELETE")
def workspace_tags(request: HttpRequest, ident: str) -> HttpResponse:
    """GET the workspace's tags; POST adds, DELETE removes those in the body
    (`{"data": [{"type": "tags", "attributes": {"name": "…"}}]}`; `admin`)."""
    ws = _workspace_by_id(request, ident, Action.READ)
    if request.method != "GET":
        try:
            doc = json.loads(request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise Invalid("the body is not JSON") from None
        items = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(items, list) or not all(
                isinstance(i, dict) and isinstance((i.get("attributes") or {}).get("name"), str) for i in items):
            raise Invalid("the body must be {\"data\": [{\"type\": \"tags\", \"attributes\": {\"name\": …}}, …]}")
        ws = workspace_tags_change(workspace=ws, actor=request.user, tags=[i["attributes"]["name"] for i in items],
                                   mode="add" if request.method == "POST" else "remove")
        return no_content()
    window, meta = page(request, len(ws.tags), default_size=100)
    return document([{"id": f"tag-{name}", "type": "tags", "attributes": {"name": name}}
                     for name in ws.tags[window]], meta=meta)


@endpoint("GET", "POST", "PATCH", "DELETE")
def remote_state_consumers(request: HttpRequest, ident: str) -> HttpResponse:
    """The workspaces whose runs may read this one's state (remote state sharing): GET lists
    them (`read`); POST adds, PATCH replaces, DELETE removes the ones in the body
    (`{"data": [{"type": "workspaces", "id": "ws-…"}]}`; `admin`)."""
    ws = _workspace_by_id(request, ident, Action.READ)
    if request.method == "GET":
        consumers = ws.remote_state_consumers.select_related("pool").order_by("name")
        window, meta = page(request, consumers.count())
        return document([resources.workspace(c, request.user) for c in consumers[window]], meta=meta)
    try:
        doc = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise Invalid("the body is not JSON") from None
    items = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(items, list) or len(items) > 1000 or not all(
            isinstance(i, dict) and i.get("type") == "workspaces" and isinstance(i.get("id"), str) for i in items):
        raise Invalid("the body must be {\"data\": [{\"type\": \"workspaces\", \"id\": \"ws-…\"}, …]}")
    consumers = []
    for item in items:
        consumer = Workspace.objects.filter(id=parse_id("ws", item["id"])).first()
        if consumer is None:
            raise NotFound("no such workspace")
        consumers.append(consumer)
    mode = {"POST": "add", "PATCH": "replace", "DELETE": "remove"}[request.method]
    workspace_remote_state_consumers_change(workspace=ws, actor=request.user, consumers=consumers, mode=mode)
    return no_content()


# --- configuration versions ------------------------------------------------------------------


def _upload(request: HttpRequest, ident: str) -> ConfigurationUpload:
    upload = ConfigurationUpload.objects.select_related("workspace").filter(id=parse_id("cv", ident)).first()
    if upload is None:
        raise NotFound("no such configuration version")
    require(request.user, Action.READ, upload.workspace)
    return upload


@endpoint("GET", "POST")
def configuration_versions(request: HttpRequest, ident: str) -> HttpResponse:
    if request.method == "POST":
        ws = _workspace_by_id(request, ident, Action.READ)
        data = body(request, "configuration-versions", required=False)
        speculative = data.bool("speculative")
        # `write`, even for a speculative plan (HCP Terraform lets `plan` do that): a plan of
        # configuration of one's own runs with the workspace's variables, sensitive ones
        # included, and a credential of its state, so it is as good as uploading one.
        require(request.user, Action.UPLOAD_CONFIGURATION, ws)
        upload = configuration_upload_create(workspace=ws, actor=request.user, speculative=speculative,
                                             auto_queue_runs=False)
        return document(resources.configuration_version(upload), status=201)
    ws = _workspace_by_id(request, ident, Action.READ)
    uploads = ConfigurationUpload.objects.filter(workspace=ws).order_by("-id")
    window, meta = page(request, uploads.count())
    return document([resources.configuration_version(u) for u in uploads[window]], meta=meta)


@endpoint("GET")
def configuration_version(request: HttpRequest, ident: str) -> HttpResponse:
    return document(resources.configuration_version(_upload(request, ident)))


@endpoint("PUT", public=True)
def configuration_upload(request: HttpRequest, ident: str, token: str) -> HttpResponse:
    """The archive, PUT by go-tfe to the signed upload URL with no token of ours: the URL is
    the grant (for this one configuration version, for UPLOAD_MAX_AGE_SECONDS)."""
    upload_id = signing.unsign(token, "upload", max_age=signing.UPLOAD_MAX_AGE_SECONDS)
    if upload_id != parse_id("cv", ident):
        raise NotFound("this URL is invalid or has expired")
    data = request.read(settings.IAC_MAX_CONFIG_BYTES + 1)
    if not data:
        raise Invalid(fields={"archive": ["the body is empty: PUT the configuration as a .tar.gz"]})
    configuration_upload_receive(upload_id=upload_id, data=data)
    return no_content(200)


# --- runs ------------------------------------------------------------------------------------

# HCL's quoted string, as terraform writes a string `-var` into a run's variables: its value
# (a TF_VAR_ of a string variable is taken literally). Other values (numbers, lists, maps)
# are HCL, which terraform parses from TF_VAR_ for variables of those types.
_HCL_STRING = re.compile(r'"(?:[^"\\$%]|\\.|\$(?!\{)|%(?!\{))*"')
_HCL_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def _hcl_value(text: str) -> str:
    if not _HCL_STRING.fullmatch(text):
        return text
    out, chars = [], iter(text[1:-1])
    for c in chars:
        if c != "\\":
            out.append(c)
            continue
        nxt = next(chars, "")
        if nxt not in _HCL_ESCAPES:
            return text  # \uNNNN and friends: leave it to terraform
        out.append(_HCL_ESCAPES[nxt])
    return "".join(out)


def _run_variables(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, list) or len(raw) > 500:
        raise Invalid(fields={"variables": ["must be a list of at most 500 {\"key\", \"value\"} objects"]})
    variables = {}
    for item in raw:
        key, value = (item.get("key"), item.get("value")) if isinstance(item, dict) else (None, None)
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,199}", key) or \
                not isinstance(value, str) or len(value) > 100_000 or "\x00" in value:
            raise Invalid(fields={"variables": ["each one a {\"key\": <variable name>, \"value\": <HCL value>}"]})
        variables[key] = _hcl_value(value)
    return variables


def _addresses(data: Any, name: str) -> list[str]:
    """-target / -replace addresses, as the REST API takes them (tasks_app/serializers.py)."""
    addresses = data.str_list(name, max_items=100)
    for address in addresses:
        if len(address) > 1000 or not re.fullmatch(ADDRESS_PATTERN.replace("$", r"\Z"), address):
            raise Invalid(fields={name: ["resource addresses (not options, no control characters)"]})
    return addresses


def _run_document(request: HttpRequest, task_id: int, status: int = 200) -> HttpResponse:
    task = Task.objects.select_related("workspace", "plan").defer("plan__encrypted_data", "plan__encrypted_json").get(id=task_id)
    upload_id = ConfigurationUpload.objects.filter(configuration_version_id=task.configuration_version_id) \
        .values_list("id", flat=True).first()
    included = []
    include = set(request.GET.get("include", "").split(","))
    if "plan" in include:
        included.append(resources.plan(task))
    if "apply" in include:
        included.append(resources.apply(task))
    if "workspace" in include:
        included.append(resources.workspace(task.workspace, request.user))
    return document(resources.run(task, request.user, upload_id=upload_id), status=status, included=included)


@endpoint("POST")
def runs(request: HttpRequest) -> HttpResponse:
    data = body(request, "runs")
    ws = _workspace_by_id(request, data.related_id("workspace") or "", Action.READ)
    cv_ident = data.related_id("configuration-version", required=False)
    upload = None
    if cv_ident is not None:
        upload = ConfigurationUpload.objects.filter(id=parse_id("cv", cv_ident), workspace=ws) \
            .select_related("configuration_version").first()
        if upload is None:
            raise NotFound("no such configuration version in this workspace")
        if upload.configuration_version is None:
            raise Conflict("the configuration version has no files yet: upload them first")
    destroy, refresh_only = data.bool("is-destroy"), data.bool("refresh-only")
    if destroy and refresh_only:
        raise Invalid(fields={"refresh-only": ["a run is a destroy plan or a refresh-only plan, not both"]})
    if not data.bool("refresh", True):
        raise Invalid(fields={"refresh": ["plans without refresh (-refresh=false) are not offered"]})
    mode = PlanMode.DESTROY if destroy else PlanMode.REFRESH_ONLY if refresh_only else PlanMode.NORMAL
    plan_only = data.bool("plan-only") or (upload is not None and upload.speculative)
    operation = Operation.PLAN if plan_only else Operation.PLAN_AND_APPLY
    require(request.user, Action.QUEUE_PLAN if plan_only else Action.QUEUE_APPLY, ws)
    if not plan_only and ws.vcs_connection_id is not None:
        raise Conflict(VCS_APPLY_REFUSED)
    task = run_create(
        workspace=ws, operation=operation, actor=request.user,
        # Not the request's `message`: a run's message is the platform's word on it (tasks_app/serializers.py).
        message="queued by terraform through the TFE API",
        mode=mode, targets=_addresses(data, "target-addrs"), replace=_addresses(data, "replace-addrs"),
        configuration_version=upload.configuration_version if upload else None,
        auto_apply=data.bool("auto-apply") and not plan_only,
        variables=_run_variables(data.attributes.get("variables")),
    )
    return _run_document(request, task.id, status=201)


@endpoint("GET")
def run(request: HttpRequest, ident: str) -> HttpResponse:
    task = run_for(request.user, Action.READ, parse_id("run", ident))
    return _run_document(request, task.id)


@endpoint("POST")
def run_action(request: HttpRequest, ident: str, action: str) -> HttpResponse:
    """apply (Confirm: the browser's dialog's path, warm apply included), discard, cancel,
    force-cancel: 202 and no body, as go-tfe expects; a refusal is 409 with our words."""
    task_id = parse_id("run", ident)
    comment = _plain_comment(request.body) if request.body.strip() else ""
    if action == "apply":
        run_for(request.user, Action.CONFIRM, task_id)
        result = run_confirm(task_id=task_id, actor=request.user, comment=comment)
        if result.refused:
            raise Conflict(result.refused)
    elif action == "discard":
        run_for(request.user, Action.DISCARD, task_id)
        run_discard(task_id=task_id, actor=request.user, comment=comment)
    elif action in ("cancel", "force-cancel"):
        force = action == "force-cancel"
        run_for(request.user, Action.FORCE_CANCEL if force else Action.CANCEL, task_id)
        run_cancel(task_id=task_id, actor=request.user, force=force, comment=comment)
    else:
        raise NotFound(f"no run action '{action}'")
    return no_content(202)


def _plain_comment(raw: bytes) -> str | None:
    """go-tfe posts the actions' options as plain JSON: {"comment": "..."} (or nothing)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("the body is not JSON") from None
    if not isinstance(doc, dict):
        raise Invalid("the body must be a JSON object")
    comment = doc.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > 2000):
        raise Invalid(fields={"comment": ["a string of at most 2000 characters"]})
    return comment or ""


@endpoint("GET")
def workspace_runs(request: HttpRequest, ident: str) -> HttpResponse:
    ws = _workspace_by_id(request, ident, Action.READ)
    tasks = Task.objects.filter(workspace=ws).select_related("workspace", "plan").defer("plan__encrypted_data", "plan__encrypted_json")
    wanted = [s for s in request.GET.get("filter[status]", "").split(",") if s]
    if wanted:
        try:
            ours = set().union(*(RUN_STATUS_BACK[TfeRunStatus(s)] for s in wanted))
        except ValueError:
            raise Invalid(fields={"filter[status]": [f"statuses are {', '.join(TfeRunStatus)}"]}) from None
        tasks = tasks.filter(status__in=sorted(ours))
    tasks = tasks.order_by("-id")
    window, meta = page(request, tasks.count())
    return document([resources.run(t, request.user) for t in tasks[window]], meta=meta)


@endpoint("GET")
def run_events(request: HttpRequest, ident: str) -> HttpResponse:
    """Policy and task enforcement changes, which terraform shows as warnings: we have none."""
    run_for(request.user, Action.READ, parse_id("run", ident))
    window, meta = page(request, 0)
    return document([], meta=meta)


# --- policy checks ----------------------------------------------------------------------------


def _policy_checked_run(request: HttpRequest, ident: str, action: Action = Action.READ) -> Task:
    task = run_for(request.user, action, parse_id("polchk", ident))
    if not task.policy_status:
        raise NotFound("no such policy check")
    return task


def _policy_check_row(task: Task) -> PolicyCheck | None:
    return PolicyCheck.objects.select_related("overridden_by").filter(task=task).first()


@endpoint("GET")
def run_policy_checks(request: HttpRequest, ident: str) -> HttpResponse:
    task = run_for(request.user, Action.READ, parse_id("run", ident))
    checks = [resources.policy_check(task, _policy_check_row(task), request.user)] if task.policy_status else []
    window, meta = page(request, len(checks))
    return document(checks[window], meta=meta)


@endpoint("GET")
def policy_check(request: HttpRequest, ident: str) -> HttpResponse:
    task = _policy_checked_run(request, ident)
    return document(resources.policy_check(task, _policy_check_row(task), request.user))


@endpoint("GET")
def policy_check_output(request: HttpRequest, ident: str) -> HttpResponse:
    task = _policy_checked_run(request, ident)
    return HttpResponse(resources.policy_check_output(_policy_check_row(task)), content_type="text/plain")


@endpoint("POST")
def policy_check_action(request: HttpRequest, ident: str, action: str) -> HttpResponse:
    """override: terraform's answer `override` to a soft-failed check (admin on the
    workspace). The CLI sends no reason: the override records who did it from there."""
    if action != "override":
        raise NotFound(f"no policy check action '{action}'")
    task = _policy_checked_run(request, ident)
    run_policy_override(task_id=task.id, actor=request.user, from_cli=True)
    task = Task.objects.select_related("workspace").get(id=task.id)
    return document(resources.policy_check(task, _policy_check_row(task), request.user))


# --- plans, applies and their logs -----------------------------------------------------------


def _phase_run(request: HttpRequest, prefix: str, ident: str) -> Task:
    task = run_for(request.user, Action.READ, parse_id(prefix, ident))
    return Task.objects.select_related("workspace", "plan").defer("plan__encrypted_data", "plan__encrypted_json").get(id=task.id)


# A phase that ended this recently reads as running until its log's end (ETX) was served.
LOG_END_GRACE_SECONDS = 2.0


def _log_end_key(phase: str, task_id: int) -> str:
    return f"tfe-log-end:{phase}:{task_id}"


def _until_log_end(doc: dict[str, Any], phase: str, task: Task) -> dict[str, Any]:
    """go-tfe's LogReader, on every tenth read that brings nothing new, asks the phase's
    status and stops reading once it is over. A read answered just before the log's last
    lines and the status were committed (one transaction), then the status asked just after,
    lost the end of the log ("Apply complete!") in the terminal. So a phase over for less
    than LOG_END_GRACE_SECONDS reads as running until its log's end was served to a reader:
    that reader then reads the rest. Any other reader sees the status at most that late."""
    status = doc["attributes"]["status"]
    recent = (timezone.now() - task.updated_at).total_seconds() < LOG_END_GRACE_SECONDS
    if recent and phase_done(TfePhaseStatus(status)) and wakeups.marked(_log_end_key(phase, task.id)) is False:
        doc["attributes"]["status"] = TfePhaseStatus.RUNNING.value
    return doc


@endpoint("GET")
def plan(request: HttpRequest, ident: str) -> HttpResponse:
    task = _phase_run(request, "plan", ident)
    return document(_until_log_end(resources.plan(task), "plan", task))


@endpoint("GET")
def apply(request: HttpRequest, ident: str) -> HttpResponse:
    task = _phase_run(request, "apply", ident)
    return document(_until_log_end(resources.apply(task), "apply", task))


# terraform skips the first three lines of an apply's log (TFE's own header lines there).
APPLY_LOG_HEADER = "Applying the confirmed plan.\n\n\n"
LOG_READ_MAX_BYTES = 1024 * 1024


def _phase_log(task_id: int, kind: JobKind, *, upto: int) -> bytes:
    """The phase's log, without colour codes (the CLI prints it as it is, `-no-color` or
    not), its first `upto` bytes at least. Read from its start on every call: offsets count
    the stripped text, which no stored offset does (fine for the logs of a plan; a log of
    tens of MiB costs a scan per 64 KiB read, see docs/architecture.md)."""
    out = bytearray()
    for text in (LogChunk.objects.filter(task_id=task_id, job__kind=kind).order_by("offset")
                 .values_list("text", flat=True).iterator(chunk_size=200)):
        out += strip_ansi(text).encode()
        if len(out) >= upto:
            break
    return bytes(out)


def _log_answer(request: HttpRequest, log: bytes, done: bool, *, end_key: str) -> HttpResponse:
    """The phase's log framed as go-tfe's LogReader reads it: STX, the log, and ETX once the
    phase is over; `offset` and `limit` count bytes of that framed stream. Serving the ETX
    is noted (`end_key`): the phase's status may read as over from then on (_until_log_end)."""
    offset, limit = _window(request)
    stream = b"\x02" + log + (b"\x03" if done else b"")
    if done and offset < len(stream) <= offset + limit:
        wakeups.mark(end_key, 600)
    return HttpResponse(stream[offset:offset + limit], content_type="text/plain; charset=utf-8")


def _window(request: HttpRequest) -> tuple[int, int]:
    def number(name: str, default: int) -> int:
        raw = request.GET.get(name, "")
        if raw and (not raw.isdigit() or len(raw) > 15):
            raise Invalid(fields={name: ["a non-negative integer"]})
        return int(raw) if raw else default

    return number("offset", 0), min(number("limit", LOG_READ_MAX_BYTES), LOG_READ_MAX_BYTES)


@endpoint("GET", public=True)
def plan_log(request: HttpRequest, ident: str, token: str) -> HttpResponse:
    task_id = signing.unsign(token, "plan-log")
    if task_id != parse_id("plan", ident):
        raise NotFound("this URL is invalid or has expired")
    # The status first: a plan that was over then has all of its log written.
    task = Task.objects.only("id", "status", "plan_hash").get(id=task_id)
    done = phase_done(plan_status(task.status, plan_done=bool(task.plan_hash)))
    offset, limit = _window(request)
    return _log_answer(request, _phase_log(task_id, JobKind.PLAN, upto=offset + limit), done,
                       end_key=_log_end_key("plan", task_id))


@endpoint("GET", public=True)
def apply_log(request: HttpRequest, ident: str, token: str) -> HttpResponse:
    task_id = signing.unsign(token, "apply-log")
    if task_id != parse_id("apply", ident):
        raise NotFound("this URL is invalid or has expired")
    task = Task.objects.only("id", "status", "confirmed_at").get(id=task_id)
    done = phase_done(apply_status(task.status, confirmed=task.confirmed_at is not None))
    offset, limit = _window(request)
    return _log_answer(request, APPLY_LOG_HEADER.encode() + _phase_log(task_id, JobKind.APPLY, upto=offset + limit),
                       done, end_key=_log_end_key("apply", task_id))


def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    return error(404, "no such resource in this API")

