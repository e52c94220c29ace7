"""Who may do what: the one decision every door asks (pages, REST API, websockets, the state
backend, the admin).

Teams are Django groups. A team has one level on a workspace (WorkspaceAccess); a user's
level is the highest of their teams'. Site admins (staff) have `admin` on every workspace and
alone manage pools, agents, teams and users. A workspace a user cannot read does not exist for
them: 404, never 403, so its name is not revealed; a readable workspace refuses an action
above the user's level with 403.
"""

from __future__ import annotations

import enum
from typing import Any

from django.db.models import QuerySet

from iacplatform.errors import Forbidden, NotFound
from tasks_app.models import AccessLevel, Task, Workspace, WorkspaceAccess


class Level(enum.IntEnum):
    NONE = 0
    READ = 1
    PLAN = 2
    WRITE = 3
    ADMIN = 4


LEVEL_OF = {AccessLevel.READ: Level.READ, AccessLevel.PLAN: Level.PLAN, AccessLevel.WRITE: Level.WRITE,
            AccessLevel.ADMIN: Level.ADMIN}


class Action(enum.StrEnum):
    READ = "read"  # the workspace, runs, logs, plans, state version metadata
    QUEUE_PLAN = "queue_plan"
    QUEUE_APPLY = "queue_apply"
    CONFIRM = "confirm"
    DISCARD = "discard"
    CANCEL = "cancel"
    LOCK = "lock"  # the workspace (no new runs) and the state
    EDIT_VARIABLES = "edit_variables"
    READ_VARIABLES = "read_variables"
    UPLOAD_CONFIGURATION = "upload_configuration"
    # The raw state holds every secret of the infrastructure in clear: `write`, not `read`.
    READ_STATE = "read_state"
    WRITE_STATE = "write_state"
    SETTINGS = "settings"  # pool, auto-apply, terraform version, name
    MANAGE_ACCESS = "manage_access"
    FORCE_UNLOCK = "force_unlock"
    FORCE_CANCEL = "force_cancel"
    DELETE = "delete"
    OVERRIDE_POLICY = "override_policy"  # a soft-mandatory policy's failure, so the run may be confirmed


REQUIRED: dict[Action, Level] = {
    Action.READ: Level.READ,
    Action.READ_VARIABLES: Level.READ,  # sensitive values are never shown to anyone
    Action.QUEUE_PLAN: Level.PLAN,
    Action.QUEUE_APPLY: Level.WRITE,
    Action.CONFIRM: Level.WRITE,
    Action.DISCARD: Level.WRITE,
    Action.CANCEL: Level.WRITE,
    Action.LOCK: Level.WRITE,
    Action.EDIT_VARIABLES: Level.WRITE,
    Action.UPLOAD_CONFIGURATION: Level.WRITE,
    Action.READ_STATE: Level.WRITE,
    Action.WRITE_STATE: Level.WRITE,
    Action.SETTINGS: Level.ADMIN,
    Action.MANAGE_ACCESS: Level.ADMIN,
    Action.FORCE_UNLOCK: Level.ADMIN,
    Action.FORCE_CANCEL: Level.ADMIN,
    Action.DELETE: Level.ADMIN,
    Action.OVERRIDE_POLICY: Level.ADMIN,
}


def is_site_admin(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_staff)


def level(user: Any, workspace: Workspace) -> Level:
    """The user's level on the workspace (one query, none for a site admin)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return Level.NONE
    if is_site_admin(user):
        return Level.ADMIN
    levels = WorkspaceAccess.objects.filter(workspace=workspace, team__user=user).values_list("level", flat=True)
    return max((LEVEL_OF[AccessLevel(v)] for v in levels), default=Level.NONE)


def can(user: Any, action: Action, workspace: Workspace) -> bool:
    return level(user, workspace) >= REQUIRED[action]


def allowed_actions(user: Any, workspace: Workspace) -> set[Action]:
    """Everything the user may do on the workspace (for pages that hide what is refused)."""
    have = level(user, workspace)
    return {a for a, need in REQUIRED.items() if have >= need}


def require(user: Any, action: Action, workspace: Workspace) -> None:
    """NotFound when the user may not even read the workspace, Forbidden when they may read
    it but not do this."""
    have = level(user, workspace)
    if have < Level.READ:
        raise NotFound("no such workspace")
    if have < REQUIRED[action]:
        raise Forbidden(
            f"you need '{REQUIRED[action].name.lower()}' on workspace '{workspace.name}' to {action.replace('_', ' ')}; "
            f"you have '{have.name.lower()}'"
        )


def workspace_for(user: Any, action: Action, workspace_id: int) -> Workspace:
    """The workspace, if the user may do `action` on it (see `require`)."""
    workspace = Workspace.objects.select_related("pool").filter(id=workspace_id).first()
    if workspace is None:
        raise NotFound("no such workspace")
    require(user, action, workspace)
    return workspace


def run_for(user: Any, action: Action, task_id: int) -> Task:
    """The run, if the user may do `action` on its workspace: NotFound when they cannot read
    it (the same answer as for a run that does not exist), Forbidden below the level."""
    task = Task.objects.select_related("workspace__pool").filter(id=task_id).first()
    if task is None or level(user, task.workspace) < Level.READ:
        raise NotFound("no such run")
    require(user, action, task.workspace)
    return task


def readable_workspaces(user: Any) -> QuerySet[Workspace]:
    if is_site_admin(user):
        return Workspace.objects.all()
    if user is None or not user.is_authenticated or not user.is_active:
        return Workspace.objects.none()
    return Workspace.objects.filter(access__team__user=user).distinct()


def can_create_workspace(user: Any) -> bool:
    """Site admins, and members of a team a site admin allowed to (the group holds Django's
    `tasks_app.add_workspace` permission)."""
    return is_site_admin(user) or bool(user and user.is_authenticated and user.has_perm("tasks_app.add_workspace"))


def can_use_pool(user: Any, pool: Any) -> bool:
    """A workspace goes only on a pool one of its creator's or admin's teams may use."""
    if is_site_admin(user):
        return True
    return bool(user and user.is_authenticated and pool.teams.filter(user=user).exists())


def creating_team(user: Any) -> Any:
    """The team that gets `admin` on a workspace a non-staff user creates: the first of
    their teams allowed to create workspaces."""
    for group in user.groups.order_by("name"):
        if group.permissions.filter(codename="add_workspace", content_type__app_label="tasks_app").exists():
            return group
    return None
