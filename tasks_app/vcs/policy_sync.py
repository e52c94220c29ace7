"""Policy sets taken from a repository: a directory of a branch, synced on each push (the
webhook's delivery processing), on the VCS tick for polled plain git connections, and on a
site admin's request (the API's sync action).

A sync fetches that exact commit with the git code runs use (tasks_app.vcs.git: shallow, the
upload's archive limits), takes every `*.rego` file directly in the directory as a policy
named after its file (`*_test.rego`, OPA's tests, are skipped), reads their enforcement
levels from `policies.hcl` (or its JSON variant `policies.json`), the configuration file HCP
Terraform reads for OPA policy sets, and hands them to the policies service, which checks
and compiles them as an upload's and replaces the set's policies in one transaction. Any
failure (git, a module that does not compile, a bad configuration file) leaves the set's
policies as they were and records the error on the set; both are audited."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import hcl2
from django.utils import timezone

from iacplatform.errors import Conflict, Invalid, NotFound, PlatformError
from tasks_app.models import PolicySet
from tasks_app.services.policies import PACKAGE, policy_set_sync_failed, policy_set_sync_replace
from tasks_app.states import EnforcementLevel
from tasks_app.vcs import events as vcs_events
from tasks_app.vcs import git
from tasks_app.vcs.connections import NAME as CONNECTION_NAME
from tasks_app.vcs.connections import follow_values
from tasks_app.vcs.events import Change
from tasks_app.vcs.models import VcsConnection, VcsKind

log = logging.getLogger(__name__)

MANIFESTS = ("policies.hcl", "policies.json")
# HCP Terraform's OPA levels are advisory and mandatory; a failed mandatory OPA policy can be
# overridden there by those allowed to, which is our soft-mandatory. Our own names are
# accepted too (hard-mandatory has no HCP counterpart for OPA).
LEVELS = {"advisory": EnforcementLevel.ADVISORY, "mandatory": EnforcementLevel.SOFT_MANDATORY,
          **{level: level for level in EnforcementLevel.values}}
BLOCK_FIELDS = {"query", "enforcement_level", "description"}


def repository_values(raw: Any) -> dict[str, Any]:
    """The set's repository fields from the API's {"connection", "repository", "branch",
    "directory"}, checked as a workspace's are (tasks_app.vcs.connections)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("connection"), str) \
            or not CONNECTION_NAME.fullmatch(raw["connection"]):
        raise Invalid("repository: an object {connection (a connection's name), repository, branch, directory}",
                      fields={"repository": ["an object {connection, repository, branch, directory}"]})
    unknown = set(raw) - {"connection", "repository", "branch", "directory"}
    if unknown:
        raise Invalid(f"repository: unknown field(s) {', '.join(sorted(unknown))}")
    values = follow_values(connection=raw["connection"], repository=raw.get("repository") or "",
                           branch=raw.get("branch") or "", working_directory=raw.get("directory") or "")
    return {"vcs_connection": values["vcs_connection"], "vcs_repository": values["vcs_repository"],
            "vcs_branch": values["vcs_branch"], "vcs_directory": values["vcs_working_directory"]}


def _unquote(value: Any) -> Any:
    # python-hcl2 keeps a string's quotes ("\"advisory\""); the JSON variant has none.
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _blocks(name: str, text: str) -> dict[str, dict[str, Any]]:
    """{policy name: its attributes} from policies.hcl / policies.json."""
    try:
        parsed = json.loads(text) if name.endswith(".json") else hcl2.loads(text)
    except Exception as exc:  # noqa: BLE001 - the parsers raise their own kinds (lark's, JSON's)
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise Invalid(f"{name} cannot be read: {first}") from exc
    if not isinstance(parsed, dict):
        raise Invalid(f"{name}: expected `policy \"name\" {{ ... }}` blocks")
    unknown = set(parsed) - {"policy"}
    if unknown:
        raise Invalid(f"{name}: unknown block(s) {', '.join(sorted(map(str, unknown)))}; only `policy` blocks are read")
    raw = parsed.get("policy") or []
    items = raw if isinstance(raw, list) else [raw]
    blocks: dict[str, dict[str, Any]] = {}
    for item in items:
        if not isinstance(item, dict):
            raise Invalid(f"{name}: a policy block must be `policy \"name\" {{ ... }}`")
        for label, body in item.items():
            label = _unquote(label)
            if not isinstance(body, dict):
                raise Invalid(f"{name}: policy {label!r} has no body")
            body = {k: _unquote(v) for k, v in body.items() if k != "__is_block__"}
            extra = set(body) - BLOCK_FIELDS
            if extra:
                raise Invalid(f"{name}: policy {label!r} has unknown attribute(s) {', '.join(sorted(extra))}")
            if label in blocks:
                raise Invalid(f"{name}: policy {label!r} is declared twice")
            blocks[label] = body
    return blocks


def policies_from_files(entries: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    """The policies of a directory's files (paths relative to it): [{name, enforcement_level,
    module}], for the policies service to check and compile. Invalid for a configuration file
    that cannot be read or names a policy the directory does not have."""
    files = {path: content for path, content in entries if "/" not in path}
    present = [m for m in MANIFESTS if m in files]
    if len(present) > 1:
        raise Invalid("the directory has both policies.hcl and policies.json: keep one")
    modules: dict[str, str] = {}
    for path, content in sorted(files.items()):
        if not path.endswith(".rego") or path.endswith("_test.rego"):
            continue
        try:
            modules[path.removesuffix(".rego")] = content.decode()
        except UnicodeDecodeError as exc:
            raise Invalid(f"{path} is not UTF-8 text") from exc
    if not modules:
        raise Invalid("the directory has no *.rego files")
    blocks: dict[str, dict[str, Any]] = {}
    if present:
        try:
            text = files[present[0]].decode()
        except UnicodeDecodeError as exc:
            raise Invalid(f"{present[0]} is not UTF-8 text") from exc
        blocks = _blocks(present[0], text)
    problems: list[str] = []
    for label in sorted(set(blocks) - set(modules)):
        problems.append(f"{present[0]}: policy {label!r} has no file {label}.rego in the directory")
    policies = []
    for name, module in modules.items():
        block = blocks.get(name, {})
        level = block.get("enforcement_level", "advisory")
        if level not in LEVELS:
            problems.append(f"{present[0]}: policy {name!r}: enforcement_level must be advisory or mandatory "
                            f"(or {', '.join(EnforcementLevel.values)})")
            continue
        query = block.get("query")
        found = PACKAGE.search(module)
        if query is not None and found is not None and query not in (f"data.{found.group(1)}.deny",
                                                                        f"data.{found.group(1)}"):
            problems.append(f"{present[0]}: policy {name!r}: query must be data.{found.group(1)}.deny "
                            f"(each policy is its file's package, queried at .deny and .warn)")
            continue
        policies.append({"name": name, "enforcement_level": LEVELS[level], "module": module})
    if problems:
        raise Invalid("; ".join(problems), fields={"policies": problems})
    return policies


def policy_set_sync(*, policy_set_id: int, actor: Any, sha: str | None = None, delivery_id: int | None = None,
                    force: bool = True) -> PolicySet:
    """Sync a set from its branch at `sha` (None: the branch's head, from ls-remote). The set
    is returned with its policies replaced, or as it was with `vcs_sync_error` recorded."""
    ps = PolicySet.objects.select_related("vcs_connection").filter(id=policy_set_id).first()
    if ps is None:
        raise NotFound(f"no policy set {policy_set_id}")
    if ps.source != "vcs" or ps.vcs_connection is None:
        raise Conflict(f"policy set '{ps.name}' does not follow a repository")
    connection = ps.vcs_connection
    try:
        url = git.clone_url(connection, ps.vcs_repository)
        with git.git_dir(connection) as (repo, env):
            if sha is None:
                sha = git.ls_remote(env, repo, url=url, branch=ps.vcs_branch)
                if sha is None:
                    raise Invalid(f"the repository has no branch {ps.vcs_branch}")
            git.checked_sha(sha)
            if not force and sha in (ps.vcs_sha, ps.vcs_error_sha):
                return ps
            git.fetch_commit(repo, env, url=url, sha=sha, branch=ps.vcs_branch)
            entries = git.archive_entries(repo, env, sha=sha, directory=ps.vcs_directory)
        policies = policies_from_files(entries)
        where = f"{ps.vcs_directory or 'the root'} at {sha[:12]}"
        try:
            policy_set_sync_replace(policy_set_id=ps.id, policies=policies, sha=sha, actor=actor,
                                    delivery_id=delivery_id)
        except Invalid as exc:
            raise Invalid(f"the policies of {where} were refused: {exc}") from exc
    except PlatformError as exc:
        log.warning("policy set %s: sync failed: %s", ps.name, exc)
        policy_set_sync_failed(policy_set_id=ps.id, sha=sha or "", error=str(exc), actor=actor)
    return PolicySet.objects.get(id=ps.id)


def _result(ps: PolicySet) -> str:
    if ps.vcs_sync_error:
        return f"policy set {ps.name}: sync failed: {ps.vcs_sync_error.splitlines()[0][:300]}"
    return f"policy set {ps.name}: synced {ps.vcs_sha[:7]}"


def policy_sets_sync_push(*, connection: VcsConnection, change: Change, delivery_id: int) -> list[str]:
    """The sets following the pushed branch whose directory the push touches, synced at its
    commit (one delivery may sync sets and start runs). A set that a newer delivery already
    synced, or that holds this commit, is left alone."""
    if change.kind != "branch" or change.deleted:
        return []
    notes = []
    for ps in PolicySet.objects.filter(source="vcs", vcs_connection=connection, vcs_repository=change.repository,
                                       vcs_branch=change.ref_name).order_by("id"):
        if ps.vcs_delivery_id is not None and ps.vcs_delivery_id > delivery_id or ps.vcs_sha == change.sha:
            continue
        if ps.vcs_sha and not vcs_events.matches([], ps.vcs_directory, change.changed):
            continue
        synced = policy_set_sync(policy_set_id=ps.id, actor=f"git push {change.sha[:7]}", sha=change.sha,
                                 delivery_id=delivery_id)
        notes.append(_result(synced))
    return notes


def policy_sets_poll_due() -> list[int]:
    """Sets following a polled plain git connection whose interval has run out."""
    now = timezone.now()
    due = []
    for ps in PolicySet.objects.filter(source="vcs", vcs_connection__kind=VcsKind.GIT,
                                       vcs_connection__poll_interval_seconds__gt=0) \
            .select_related("vcs_connection").only("id", "vcs_polled_at", "vcs_connection__poll_interval_seconds"):
        interval = ps.vcs_connection.poll_interval_seconds
        if ps.vcs_polled_at is None or ps.vcs_polled_at + timedelta(seconds=interval) <= now:
            due.append(ps.id)
    return due


def policy_set_poll(*, policy_set_id: int) -> str:
    """ls-remote the set's branch; a commit it neither holds nor failed on is synced."""
    PolicySet.objects.filter(id=policy_set_id).update(vcs_polled_at=timezone.now())
    before = PolicySet.objects.get(id=policy_set_id)
    after = policy_set_sync(policy_set_id=policy_set_id, actor="git poll", force=False)
    if (after.vcs_sha, after.vcs_sync_error) == (before.vcs_sha, before.vcs_sync_error):
        return f"policy set {after.name}: unchanged"
    return _result(after)

