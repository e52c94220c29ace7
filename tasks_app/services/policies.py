"""Policy sets: Rego modules that every plan of the workspaces they govern is checked against
(tasks_app.services.policy_checks evaluates them). Site admins alone create, change and
delete them, through the REST API and the admin alike; a workspace admin cannot detach what
governs their workspace. Every change is audited.

A set's policies are uploaded (`source` "upload") or taken from a repository (`source` "vcs":
tasks_app.vcs.policy_sync fetches the commit and hands the files to `policy_set_sync_replace`,
which replaces them with the same checks and the same writes as an upload).

A module is refused whole, with the engine's message, before anything is written: a set is
never saved with a module that does not compile. Modules are compiled in the process's warm
evaluator (the same bounded child process the checks use), never in the web process itself.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from iacplatform.errors import Conflict, Forbidden, Invalid, NotFound, invalid_field
from iacplatform.permissions import is_site_admin
from tasks_app.models import Policy, PolicySet, Workspace
from tasks_app.policy_engine.pool import EvaluatorFailure, EvaluatorPool, Limits
from tasks_app.services.audit import audit_record
from tasks_app.states import EnforcementLevel

# OPA's package line: `package a.b.c` (dotted identifiers). The policy is queried at
# data.<package>.deny and data.<package>.warn.
PACKAGE = re.compile(r"^[ \t]*package[ \t]+([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)[ \t]*(?:#.*)?$",
                     re.MULTILINE)
NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")
MAX_POLICIES_PER_SET = 100

_engine: EvaluatorPool | None = None
_engine_lock = threading.Lock()


def policy_engine() -> EvaluatorPool:
    """The process's warm evaluators (started on first use; the worker starts one at boot)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = EvaluatorPool(
                Limits(seconds=settings.IAC_POLICY_TIMEOUT_SECONDS,
                       memory_bytes=settings.IAC_POLICY_MEMORY_MB * 1024 * 1024),
                size=settings.IAC_POLICY_EVALUATORS,
            )
        return _engine


def _require_site_admin(actor: Any) -> None:
    if not is_site_admin(actor):
        raise Forbidden("only site admins manage policy sets")


def check_policies(raw: Any) -> None:
    """Check and compile policies as given, saving nothing (the admin's form)."""
    _checked_policies(raw)


def _checked_policies(raw: Any) -> list[Policy]:
    """The policies as given ([{name, enforcement_level, module}]), checked and compiled;
    Invalid with every problem found, nothing saved."""
    if not isinstance(raw, list) or not raw:
        raise invalid_field("policies", "a non-empty list of {name, enforcement_level, module}")
    if len(raw) > MAX_POLICIES_PER_SET:
        raise invalid_field("policies", f"at most {MAX_POLICIES_PER_SET} policies in a set")
    limit: int = settings.IAC_POLICY_MAX_MODULE_BYTES
    problems: list[str] = []
    policies: list[Policy] = []
    for n, item in enumerate(raw):
        if not isinstance(item, dict):
            raise invalid_field("policies", f"item {n} is not an object")
        name, level, module = item.get("name"), item.get("enforcement_level", EnforcementLevel.ADVISORY), item.get("module")
        label = name if isinstance(name, str) else f"item {n}"
        if not isinstance(name, str) or not NAME.fullmatch(name):
            problems.append(f"{label}: name must be 1 to 100 letters, digits, '-' or '_'")
            continue
        if level not in EnforcementLevel.values:
            problems.append(f"{name}: enforcement_level must be one of {', '.join(EnforcementLevel.values)}")
            continue
        if not isinstance(module, str) or not module.strip():
            problems.append(f"{name}: module (the Rego text) is required")
            continue
        if "\x00" in module:
            problems.append(f"{name}: the module contains a NUL character")
            continue
        size = len(module.encode())
        if size > limit:
            problems.append(f"{name}: the module is {size} bytes; the limit is {limit} (IAC_POLICY_MAX_MODULE_BYTES)")
            continue
        found = PACKAGE.search(module)
        if found is None:
            problems.append(f"{name}: the module has no `package` line")
            continue
        policies.append(Policy(name=name, enforcement_level=level, module=module, package=found.group(1)))
    names = [p.name for p in policies]
    packages = [p.package for p in policies]
    for dup in sorted({x for x in names if names.count(x) > 1}):
        problems.append(f"{dup}: two policies of the set have this name")
    for dup in sorted({x for x in packages if packages.count(x) > 1}):
        problems.append(f"package {dup}: two policies of the set declare it (each policy is its own package)")
    if problems:
        raise Invalid("; ".join(problems), fields={"policies": problems})
    try:
        errors = policy_engine().check({f"{p.name}.rego": p.module for p in policies})
    except EvaluatorFailure as exc:
        raise Invalid(f"the policies could not be compiled: {exc}", fields={"policies": [str(exc)]}) from exc
    if errors:
        problems = [f"{name.removesuffix('.rego')} does not compile:\n{text}" for name, text in errors.items()]
        raise Invalid("; ".join(problems), fields={"policies": problems})
    return policies


def _text(field: str, value: Any) -> str:
    if not isinstance(value, str) or "\x00" in value or len(value) > 10_000:
        raise invalid_field(field, "a string (no NUL characters, up to 10,000 characters)")
    return value


def _flag(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise invalid_field(field, "true or false")
    return value


def _workspaces(ids: Any) -> list[Workspace]:
    if not isinstance(ids, list | tuple) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**63 for i in ids) or len(ids) > 10_000:
        raise invalid_field("workspaces", "a list of workspace ids")
    found = list(Workspace.objects.filter(id__in=ids))
    missing = sorted(set(ids) - {w.id for w in found})
    if missing:
        raise invalid_field("workspaces", f"no workspace with id {', '.join(map(str, missing))}")
    return found


def _described(ps: PolicySet) -> dict[str, Any]:
    described = {"name": ps.name, "global": ps.is_global,
                 "workspaces": sorted(ps.workspaces.values_list("id", flat=True)),
                 "policies": [{"name": p.name, "enforcement_level": p.enforcement_level} for p in ps.policies.all()]}
    if ps.source == "vcs":
        described["repository"] = _repository_of(ps)
    return described


REPOSITORY_FIELDS = ("vcs_connection", "vcs_repository", "vcs_branch", "vcs_directory")


def _repository_of(ps: PolicySet) -> dict[str, Any]:
    return {"connection": ps.vcs_connection.name if ps.vcs_connection_id else None,
            "repository": ps.vcs_repository, "branch": ps.vcs_branch, "directory": ps.vcs_directory,
            "sha": ps.vcs_sha}


def _follow(ps: PolicySet, repository: dict[str, Any] | None) -> None:
    """Point the set at a repository (`repository`: the checked fields, see
    tasks_app.vcs.policy_sync.repository_values) or back to uploads (None: its policies are
    kept). Either way nothing of the previous repository's sync is remembered."""
    if repository is None:
        ps.source = "upload"
        ps.vcs_connection, ps.vcs_repository, ps.vcs_branch, ps.vcs_directory = None, "", "", ""
    else:
        if set(repository) != set(REPOSITORY_FIELDS):
            raise Invalid("repository: connection, repository, branch and directory are required")
        ps.source = "vcs"
        for field in REPOSITORY_FIELDS:
            setattr(ps, field, repository[field])
    ps.vcs_sha, ps.vcs_synced_at, ps.vcs_sync_error, ps.vcs_error_sha = "", None, "", ""
    ps.vcs_polled_at, ps.vcs_delivery_id = None, None


def policy_set_create(*, actor: Any, name: str, policies: Any = None, description: str = "",
                      is_global: bool = False, workspaces: Sequence[int] = (),
                      repository: dict[str, Any] | None = None) -> PolicySet:
    """A set of uploaded `policies`, or (`repository`, checked by
    tasks_app.vcs.policy_sync.repository_values) one that follows a repository: it starts
    with no policies and takes them from the first sync."""
    _require_site_admin(actor)
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise invalid_field("name", "1 to 100 letters, digits, '-' or '_'")
    description, is_global = _text("description", description), _flag("global", is_global)
    if repository is not None and policies is not None:
        raise invalid_field("policies", "a set that follows a repository takes its policies from it")
    checked = _checked_policies(policies) if repository is None else []
    attached = _workspaces(workspaces)
    try:
        with transaction.atomic():
            ps = PolicySet(name=name, description=description, is_global=is_global)
            _follow(ps, repository)
            ps.save(force_insert=True)
            ps.workspaces.set(attached)
            for p in checked:
                p.policy_set = ps
            Policy.objects.bulk_create(checked)
            audit_record(actor=actor, action="policy_set.create", obj=ps, data=_described(ps))
    except IntegrityError as exc:
        raise Conflict(f"a policy set named '{name}' exists") from exc
    return ps


def policy_set_update(*, actor: Any, policy_set_id: int, changes: dict[str, Any]) -> PolicySet:
    """Change a set: any of name, description, global, workspaces (the full list), policies
    (the full list: replaces the set's; not for a set that follows a repository), repository
    (checked fields: follow it; None: back to uploads, keeping the policies). Checked whole
    before anything is written."""
    _require_site_admin(actor)
    unknown = set(changes) - {"name", "description", "global", "workspaces", "policies", "repository"}
    if unknown:
        raise Invalid(f"unknown field(s): {', '.join(sorted(unknown))}")
    if "name" in changes and (not isinstance(changes["name"], str) or not NAME.fullmatch(changes["name"])):
        raise invalid_field("name", "1 to 100 letters, digits, '-' or '_'")
    if "description" in changes:
        _text("description", changes["description"])
    if "global" in changes:
        _flag("global", changes["global"])
    checked = _checked_policies(changes["policies"]) if "policies" in changes else None
    attached = _workspaces(changes["workspaces"]) if "workspaces" in changes else None
    try:
        with transaction.atomic():
            ps = PolicySet.objects.select_for_update().filter(id=policy_set_id).first()
            if ps is None:
                raise NotFound(f"no policy set {policy_set_id}")
            before = _described(ps)
            if "repository" in changes:
                _follow(ps, changes["repository"])
            if checked is not None and ps.source == "vcs":
                raise invalid_field("policies", "this set follows a repository: its policies come from there "
                                                "(set repository to null to upload them)")
            for field, attr in (("name", "name"), ("description", "description"), ("global", "is_global")):
                if field in changes:
                    setattr(ps, attr, changes[field])
            ps.save()
            if attached is not None:
                ps.workspaces.set(attached)
            if checked is not None:
                ps.policies.all().delete()
                for p in checked:
                    p.policy_set = ps
                Policy.objects.bulk_create(checked)
            audit_record(actor=actor, action="policy_set.update", obj=ps,
                         data={"before": before, "after": _described(ps)})
    except IntegrityError as exc:
        raise Conflict(f"a policy set named '{changes.get('name')}' exists") from exc
    return ps


def policy_set_sync_replace(*, policy_set_id: int, policies: Any, sha: str, actor: Any,
                            delivery_id: int | None = None) -> PolicySet:
    """A repository's policies at commit `sha` replace the set's, all at once: checked and
    compiled as an upload's are, then written in one transaction with the commit recorded
    and audited. Invalid (nothing written) when a module does not compile. Called by the
    sync (tasks_app.vcs.policy_sync) for a set a site admin pointed at the repository."""
    checked = _checked_policies(policies)
    with transaction.atomic():
        ps = PolicySet.objects.select_for_update().filter(id=policy_set_id, source="vcs").first()
        if ps is None:
            raise NotFound(f"no policy set {policy_set_id} following a repository")
        before = _described(ps)
        ps.policies.all().delete()
        for p in checked:
            p.policy_set = ps
        Policy.objects.bulk_create(checked)
        ps.vcs_sha, ps.vcs_synced_at, ps.vcs_sync_error, ps.vcs_error_sha = sha, timezone.now(), "", ""
        if delivery_id is not None:
            ps.vcs_delivery_id = delivery_id
        ps.save()
        audit_record(actor=actor, action="policy_set.sync", obj=ps, data={"before": before, "after": _described(ps)})
    return ps


def policy_set_sync_failed(*, policy_set_id: int, sha: str, error: str, actor: Any) -> None:
    """A sync that failed: the set keeps its policies; the error is recorded and audited."""
    with transaction.atomic():
        ps = PolicySet.objects.select_for_update().filter(id=policy_set_id).first()
        if ps is None:
            return
        ps.vcs_sync_error, ps.vcs_error_sha = error[:10000], sha
        ps.save(update_fields=["vcs_sync_error", "vcs_error_sha", "updated_at"])
        audit_record(actor=actor, action="policy_set.sync_failed", obj=ps,
                     data={"sha": sha, "error": error[:2000], "kept": _described(ps)})


def policy_set_delete(*, actor: Any, policy_set_id: int) -> None:
    _require_site_admin(actor)
    with transaction.atomic():
        ps = PolicySet.objects.select_for_update().filter(id=policy_set_id).first()
        if ps is None:
            raise NotFound(f"no policy set {policy_set_id}")
        audit_record(actor=actor, action="policy_set.delete", obj=ps, data=_described(ps))
        ps.delete()


def policy_sets_of(workspace_id: int) -> Iterable[PolicySet]:
    """The sets that govern a workspace (global ones and those attached to it), with their
    policies."""
    return (PolicySet.objects.filter(Q(is_global=True) | Q(workspaces__id=workspace_id)).distinct()
            .prefetch_related("policies").order_by("name"))
