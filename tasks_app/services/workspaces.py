"""Workspace settings and team access: the one place their rules live, for the REST API
(tasks_app/api.py, api_access.py) and the pages (tasks_app/views_workspace.py).

Who may change what is decided here, with the other rules, so that both doors agree:
locking and unlocking alone is `write`; any other setting is `admin`; a pool must be one the
actor's teams may use; team access is `admin`."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction

from agents_app.models import AgentPool
from iacplatform.errors import Forbidden, NotFound, invalid_field
from iacplatform.permissions import Action, can_create_workspace, can_use_pool, creating_team, is_site_admin, require
from tasks_app.models import AccessLevel, Workspace, WorkspaceAccess
from tasks_app.services.audit import audit_record
from tasks_app.services.runs import runs_start_next
from tasks_app.workflows.schedules import drift_schedule_check

SETTINGS_FIELDS = ("name", "pool", "auto_apply", "locked", "terraform_version", "drift_schedule", "drift_timezone")


def workspace_default_pool(user: Any) -> AgentPool:
    """The pool of a workspace created without one: IAC_DEFAULT_POOL, else the only pool the
    user may use. Invalid (naming `pool`) when there is no such single pool."""
    if settings.IAC_DEFAULT_POOL:
        pool = AgentPool.objects.filter(name=settings.IAC_DEFAULT_POOL).first()
        if pool is None:
            raise invalid_field("pool", f"required: the default pool '{settings.IAC_DEFAULT_POOL}' does not exist")
        return pool
    pools = AgentPool.objects.order_by("id")
    if not is_site_admin(user):
        pools = pools.filter(teams__user=user).distinct()
    usable = list(pools[:2])
    if len(usable) != 1:
        raise invalid_field("pool", "required: there is no single pool to default to (set IAC_DEFAULT_POOL)")
    return usable[0]


TAG = re.compile(r"[a-z0-9][a-z0-9:_-]{0,254}")


def _checked_tags(tags: list[str]) -> list[str]:
    if len(tags) > 100 or not all(isinstance(t, str) and TAG.fullmatch(t) for t in tags):
        raise invalid_field("tags", "at most 100 tags of lowercase letters, digits, ':', '-' and '_' "
                                    "(up to 255 characters, starting with a letter or digit)")
    return sorted(set(tags))


# HCP Terraform's bounds for a key-value tag; its "hc:" and "hcp:" key prefixes are reserved.
TAG_KEY_MAX, TAG_VALUE_MAX, TAG_BINDINGS_MAX = 128, 256, 100


def _checked_tag_bindings(bindings: dict[str, str]) -> dict[str, str]:
    if len(bindings) > TAG_BINDINGS_MAX:
        raise invalid_field("tag-bindings", f"at most {TAG_BINDINGS_MAX} tags")
    for key, value in bindings.items():
        if not (isinstance(key, str) and 0 < len(key) <= TAG_KEY_MAX and key.isprintable() and key.strip() == key):
            raise invalid_field("tag-bindings", f"a tag key is 1 to {TAG_KEY_MAX} printable characters, "
                                                f"without spaces around it: {key!r} is not")
        if key.lower().startswith(("hc:", "hcp:")):
            raise invalid_field("tag-bindings", f"tag key '{key}': the prefixes 'hc:' and 'hcp:' are reserved")
        if not (isinstance(value, str) and len(value) <= TAG_VALUE_MAX and value.isprintable()):
            raise invalid_field("tag-bindings", f"the value of tag '{key}' is at most {TAG_VALUE_MAX} printable "
                                                "characters")
    return dict(sorted(bindings.items()))


def workspace_tag_bindings_add(*, workspace: Workspace, actor: Any, bindings: dict[str, str]) -> Workspace:
    """Add key-value tags, or change the value of keys it has (`admin`: a setting), audited."""
    require(actor, Action.SETTINGS, workspace)
    bindings = _checked_tag_bindings(bindings)
    with transaction.atomic():
        ws = Workspace.objects.select_for_update(no_key=True).get(id=workspace.id)
        after = _checked_tag_bindings({**ws.tag_bindings, **bindings})
        if after != ws.tag_bindings:
            ws.tag_bindings = after
            ws.save(update_fields=["tag_bindings"])
            audit_record(actor=actor, action="workspace.tag_bindings", obj=ws, data={"added": bindings})
    return ws


def workspace_tags_change(*, workspace: Workspace, actor: Any, tags: list[str], mode: str) -> Workspace:
    """Add or remove tags (`admin`: a setting), audited."""
    require(actor, Action.SETTINGS, workspace)
    tags = _checked_tags(tags)
    with transaction.atomic():
        ws = Workspace.objects.select_for_update(no_key=True).get(id=workspace.id)
        before = set(ws.tags)
        after = before | set(tags) if mode == "add" else before - set(tags)
        if after != before:
            ws.tags = sorted(after)
            ws.save(update_fields=["tags"])
            audit_record(actor=actor, action="workspace.tags", obj=ws, data={"mode": mode, "tags": tags})
    return ws


def workspace_create(*, name: str, actor: Any, pool: AgentPool | None = None, tags: list[str] | None = None,
                     tag_bindings: dict[str, str] | None = None) -> Workspace:
    """A new workspace (site admins, and teams allowed to create workspaces); the creating
    team administers it, as in HCP Terraform. On the default pool unless `pool` is given."""
    if not can_create_workspace(actor):
        raise Forbidden("only site admins and teams allowed to create workspaces can create one")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", name or ""):
        raise invalid_field("name", "1 to 100 letters, digits, '-' or '_'")
    pool = pool or workspace_default_pool(actor)
    if not can_use_pool(actor, pool):
        raise Forbidden(f"none of your teams may use pool '{pool.name}'")
    team = None if is_site_admin(actor) else creating_team(actor)
    with transaction.atomic():
        try:
            with transaction.atomic():  # a savepoint: the name's uniqueness is the database's call
                ws = Workspace.objects.create(name=name, pool=pool, tags=_checked_tags(tags or []),
                                              tag_bindings=_checked_tag_bindings(tag_bindings or {}))
        except IntegrityError as exc:
            raise invalid_field("name", "a workspace with this name already exists") from exc
        if team is not None:
            WorkspaceAccess.objects.create(workspace=ws, team=team, level=AccessLevel.ADMIN)
        audit_record(actor=actor, action="workspace.create", obj=ws, data={"name": ws.name})
    return ws


def workspace_update(*, workspace: Workspace, actor: Any, changes: dict[str, Any]) -> Workspace:
    """Apply `changes` (already well-formed values of SETTINGS_FIELDS) to the workspace.

    Each lock / unlock and each settings change is audited exactly once, even under
    concurrent updates: the row lock makes "was it locked?" and the change one step. An
    unlock starts the runs that waited for it once it is committed."""
    unknown = set(changes) - set(SETTINGS_FIELDS)
    if unknown:
        raise invalid_field(sorted(unknown)[0], "not a workspace setting")
    changed = {k for k, v in changes.items() if getattr(workspace, k) != v}
    require(actor, Action.LOCK if changed <= {"locked"} else Action.SETTINGS, workspace)
    pool = changes.get("pool")
    if "pool" in changed and not can_use_pool(actor, pool):
        raise Forbidden(f"none of your teams may use pool '{pool.name}'")
    if not changed:
        return workspace
    if changed & {"drift_schedule", "drift_timezone"}:
        drift_schedule_check(changes.get("drift_schedule", workspace.drift_schedule),
                             changes.get("drift_timezone", workspace.drift_timezone))
    with transaction.atomic():
        ws = Workspace.objects.select_for_update(no_key=True).get(id=workspace.id)
        was_locked = ws.locked
        for name in changed:
            setattr(ws, name, changes[name])
        if changed & {"drift_schedule", "drift_timezone"}:
            ws.drift_next_at = None  # the drift scheduler computes the new schedule's first moment
            changed = changed | {"drift_next_at"}
        try:
            with transaction.atomic():  # a savepoint: the name's uniqueness is the database's call
                ws.save(update_fields=sorted(changed))
        except IntegrityError as exc:
            raise invalid_field("name", "a workspace with this name already exists") from exc
        settings_changed = {k: str(getattr(ws, k)) for k in changed - {"locked", "drift_next_at"}}
        if settings_changed:
            audit_record(actor=actor, action="workspace.update", obj=ws, data=settings_changed)
        if ws.locked != was_locked:
            audit_record(actor=actor, action="workspace.lock" if ws.locked else "workspace.unlock", obj=ws)
            if not ws.locked:
                # Runs queued while locked stayed pending; start them once the unlock is visible.
                workspace_id = ws.id
                transaction.on_commit(lambda: runs_start_next(workspace_id=workspace_id))
    return ws


def workspace_access_set(*, workspace: Workspace, team_name: str, level: str, actor: Any) -> WorkspaceAccess:
    """Give a team (an existing Django group) a level on the workspace (`admin` needed)."""
    require(actor, Action.MANAGE_ACCESS, workspace)
    if not team_name or len(team_name) > 150 or "\x00" in team_name:
        raise invalid_field("team", "a team name: 1 to 150 characters, no NUL")
    if level not in AccessLevel.values:
        raise invalid_field("level", f"must be one of {', '.join(AccessLevel.values)}")
    team = Group.objects.filter(name=team_name).first()
    if team is None:
        raise NotFound(f"no team '{team_name}' (site admins create teams)")
    with transaction.atomic():
        access, _ = WorkspaceAccess.objects.update_or_create(workspace=workspace, team=team, defaults={"level": level})
        audit_record(actor=actor, action="access.set", obj=workspace, data={"team": team.name, "level": level})
    return access


def workspace_access_remove(*, workspace: Workspace, team_name: str, actor: Any) -> None:
    require(actor, Action.MANAGE_ACCESS, workspace)
    with transaction.atomic():
        deleted, _ = WorkspaceAccess.objects.filter(workspace=workspace, team__name=team_name).delete()
        if not deleted:
            raise NotFound(f"team '{team_name}' has no access to workspace '{workspace.name}'")
        audit_record(actor=actor, action="access.remove", obj=workspace, data={"team": team_name})


def workspace_remote_state_consumers_change(*, workspace: Workspace, actor: Any, consumers: list[Workspace],
                                            mode: str) -> None:
    """Remote state sharing (`admin` on the workspace): `mode` "add", "remove" or "replace"
    the workspaces whose runs may read this one's state and outputs. A consumer the actor
    cannot read does not exist for them (NotFound), as everywhere."""
    require(actor, Action.SETTINGS, workspace)
    if mode not in ("add", "remove", "replace"):
        raise invalid_field("mode", "add, remove or replace")
    for consumer in consumers:
        require(actor, Action.READ, consumer)
    with transaction.atomic():
        ws = Workspace.objects.select_for_update(no_key=True).get(id=workspace.id)
        if mode == "add":
            ws.remote_state_consumers.add(*consumers)
        elif mode == "remove":
            ws.remote_state_consumers.remove(*consumers)
        else:
            ws.remote_state_consumers.set(consumers)
        audit_record(actor=actor, action="workspace.remote_state_consumers", obj=ws,
                     data={"mode": mode, "workspaces": sorted(c.name for c in consumers)})
