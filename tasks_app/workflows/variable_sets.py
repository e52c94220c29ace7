"""Variable sets: the one place their rules live, for the REST API and the admin alike.

Attaching a set sends its secrets into the code of every workspace it applies to, so a set is
managed by site admins, or by the members of the team that owns it; such a member attaches
it only to workspaces where that team has `admin`, and a team set applies only to the
workspaces the team administers. Global sets are the site admins'. Variable names follow the
workspace variables' rules (agents_app/variable_names.py), and sensitive values are
encrypted and write-only as theirs are (services/variables.py). Every change is audited,
never with a value.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from agents_app.variable_names import env_name_problem
from iacplatform.errors import Forbidden, Invalid, NotFound, invalid_field
from iacplatform.permissions import is_site_admin
from tasks_app.models import AccessLevel, VariableCategory, Workspace, WorkspaceAccess
from tasks_app.services.audit import audit_record
from tasks_app.workflows.models import VariableSet, VariableSetVariable
from tasks_app.workflows.states import VariableSetScope

SET_FIELDS = ("name", "description", "scope", "priority")
VARIABLE_FIELDS = ("key", "value", "category", "sensitive")


def variable_sets_visible(user: Any) -> QuerySet[VariableSet]:
    """The sets a user may see and manage: all for a site admin, their teams' otherwise."""
    if is_site_admin(user):
        return VariableSet.objects.all()
    if user is None or not user.is_authenticated or not user.is_active:
        return VariableSet.objects.none()
    return VariableSet.objects.filter(team__user=user).distinct()


def variable_set_for(user: Any, set_id: int) -> VariableSet:
    """The set, if the user may manage it; NotFound otherwise (its name is not revealed)."""
    found = variable_sets_visible(user).select_related("team").filter(id=set_id).first()
    if found is None:
        raise NotFound("no such variable set")
    return found


def _check_owner(actor: Any, team: Group | None, scope: str) -> None:
    if is_site_admin(actor):
        return
    if scope == VariableSetScope.GLOBAL:
        raise Forbidden("only a site admin may manage a global variable set: it applies to every workspace")
    if team is None:
        raise invalid_field("team", "a variable set of yours belongs to one of your teams: name it")
    if not team.user_set.filter(id=actor.id).exists():
        raise Forbidden(f"you are not a member of team '{team.name}'")


@contextmanager
def _unique(field: str, message: str) -> Iterator[None]:
    try:
        with transaction.atomic():
            yield
    except IntegrityError as exc:
        raise invalid_field(field, message) from exc


def _audit(actor: Any, action: str, variable_set: VariableSet, **data: Any) -> None:
    audit_record(actor=actor, action=action, obj=variable_set, data={"name": variable_set.name, **data})


def variable_set_create(*, actor: Any, name: str, scope: str = VariableSetScope.WORKSPACES, priority: bool = False,
                        description: str = "", team: Group | None = None) -> VariableSet:
    if scope not in VariableSetScope.values:
        raise invalid_field("scope", f"must be one of {', '.join(VariableSetScope.values)}")
    if scope == VariableSetScope.TEAM and team is None:
        raise invalid_field("team", "a team variable set applies to the workspaces its team administers: name it")
    _check_owner(actor, team, scope)
    variable_set = VariableSet(name=name, scope=scope, priority=priority, description=description, team=team)
    with _unique("name", f"a variable set '{name}' already exists"):
        variable_set.save()
    _audit(actor, "variable_set.create", variable_set, scope=scope, priority=priority,
           team=team.name if team else None)
    return variable_set


def variable_set_update(*, variable_set: VariableSet, actor: Any, changes: dict[str, Any]) -> VariableSet:
    unknown = set(changes) - set(SET_FIELDS)
    if unknown:
        raise invalid_field(sorted(unknown)[0], "not a variable set field")
    scope = changes.get("scope", variable_set.scope)
    if scope not in VariableSetScope.values:
        raise invalid_field("scope", f"must be one of {', '.join(VariableSetScope.values)}")
    if scope == VariableSetScope.TEAM and variable_set.team is None:
        raise invalid_field("scope", "a set without a team cannot apply to a team's workspaces")
    _check_owner(actor, variable_set.team, scope)
    for name, value in changes.items():
        setattr(variable_set, name, value)
    with _unique("name", f"a variable set '{variable_set.name}' already exists"):
        variable_set.save()
    _audit(actor, "variable_set.update", variable_set, changes=sorted(changes))
    return variable_set


def variable_set_delete(*, variable_set: VariableSet, actor: Any) -> None:
    _check_owner(actor, variable_set.team, variable_set.scope)
    _audit(actor, "variable_set.delete", variable_set)
    variable_set.delete()


def _check_attach(actor: Any, variable_set: VariableSet, workspace: Workspace) -> None:
    if variable_set.scope != VariableSetScope.WORKSPACES:
        raise Invalid(f"variable set '{variable_set.name}' applies to {variable_set.scope} workspaces: "
                      "only a set of scope 'workspaces' is attached to chosen ones")
    if is_site_admin(actor):
        return
    _check_owner(actor, variable_set.team, variable_set.scope)
    if not WorkspaceAccess.objects.filter(workspace=workspace, team=variable_set.team,
                                          level=AccessLevel.ADMIN).exists():
        raise Forbidden(f"team '{variable_set.team.name}' needs 'admin' on workspace '{workspace.name}' to "
                        "attach its variable set there: the set's secrets would reach that workspace's code")


def variable_set_attach(*, variable_set: VariableSet, workspace: Workspace, actor: Any) -> None:
    _check_attach(actor, variable_set, workspace)
    variable_set.workspaces.add(workspace)
    _audit(actor, "variable_set.attach", variable_set, workspace=workspace.name)


def variable_set_detach(*, variable_set: VariableSet, workspace: Workspace, actor: Any) -> None:
    _check_attach(actor, variable_set, workspace)
    variable_set.workspaces.remove(workspace)
    _audit(actor, "variable_set.detach", variable_set, workspace=workspace.name)


# The set's variables ------------------------------------------------------------------------


def _check_key(variable_set: VariableSet, key: str, category: str, exclude: int | None = None) -> None:
    if category not in VariableCategory.values:
        raise invalid_field("category", f"must be one of {', '.join(VariableCategory.values)}")
    if category == VariableCategory.ENV:
        problem = env_name_problem(key)
        if problem:
            raise invalid_field("key", problem)
    clash = VariableSetVariable.objects.filter(variable_set=variable_set, key=key, category=category)
    if exclude is not None:
        clash = clash.exclude(id=exclude)
    if clash.exists():
        raise invalid_field("key", f"a {category} variable '{key}' already exists in this variable set")


def _audit_variable(actor: Any, action: str, variable: VariableSetVariable) -> None:
    _audit(actor, action, variable.variable_set, key=variable.key, category=variable.category,
           sensitive=variable.sensitive)


def set_variable_create(*, variable_set: VariableSet, actor: Any, key: str, value: str,
                        category: str = VariableCategory.TERRAFORM, sensitive: bool = False) -> VariableSetVariable:
    _check_owner(actor, variable_set.team, variable_set.scope)
    _check_key(variable_set, key, category)
    variable = VariableSetVariable(variable_set=variable_set, key=key, category=category, sensitive=sensitive)
    variable.set_value(value)
    with _unique("key", f"a {category} variable '{key}' already exists in this variable set"):
        variable.save()
    _audit_variable(actor, "variable_set.variable_create", variable)
    return variable


def set_variable_update(*, variable: VariableSetVariable, actor: Any, changes: dict[str, Any]) -> VariableSetVariable:
    changes = dict(changes)
    unknown = set(changes) - set(VARIABLE_FIELDS)
    if unknown:
        raise invalid_field(sorted(unknown)[0], "not a variable field")
    variable_set = variable.variable_set
    _check_owner(actor, variable_set.team, variable_set.scope)
    _check_key(variable_set, changes.get("key", variable.key), changes.get("category", variable.category),
               exclude=variable.id)
    if variable.sensitive and changes.get("sensitive") is False:
        raise invalid_field("sensitive", "a sensitive variable cannot be made non-sensitive: delete it and create it again")
    value: str | None = changes.pop("value", None)
    if value is None and changes.get("sensitive") and not variable.sensitive:
        value = variable.plain_value
    for name, field_value in changes.items():
        setattr(variable, name, field_value)
    if value is not None:
        variable.set_value(value)
    with _unique("key", f"a {variable.category} variable '{variable.key}' already exists in this variable set"):
        variable.save()
    _audit_variable(actor, "variable_set.variable_update", variable)
    return variable


def set_variable_delete(*, variable: VariableSetVariable, actor: Any) -> None:
    variable_set = variable.variable_set
    _check_owner(actor, variable_set.team, variable_set.scope)
    _audit_variable(actor, "variable_set.variable_delete", variable)
    variable.delete()
