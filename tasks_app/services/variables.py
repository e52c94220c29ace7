"""Workspace variables: the one place their rules live, for the REST API and the workspace
page alike. The edges check the shape of each field (an identifier key, a known category);
these functions check what needs the database and record who changed what, never a value.

- A key is unique per workspace and category; the database constraint decides a race, and
  the loser gets the same message.
- A sensitive variable stays sensitive: turning it off would show the secret to everyone who
  can read the workspace. Becoming sensitive moves the current value to ciphertext.
- An `env` variable's name may not be one that changes how programs load or where terraform
  keeps its state, plan and lock (LD_PRELOAD, PATH, TF_CLI_ARGS, ...): the rule and its
  reasons live in agents_app/variable_names.py, shared with the agent, which skips such rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import IntegrityError, transaction

from agents_app.variable_names import env_name_problem
from iacplatform.errors import invalid_field
from tasks_app.models import Variable, VariableCategory, Workspace
from tasks_app.services.audit import audit_record

FIELDS = ("key", "value", "category", "sensitive")


def _clash_message(category: str, key: str) -> str:
    return f"a {category} variable '{key}' already exists in this workspace"


@contextmanager
def _unique(variable: Variable) -> Iterator[None]:
    try:
        with transaction.atomic():  # a savepoint: the caller's transaction stays usable
            yield
    except IntegrityError as exc:
        raise invalid_field("key", _clash_message(variable.category, variable.key)) from exc


def _check_free(workspace: Workspace, key: str, category: str, exclude: int | None = None) -> None:
    clash = Variable.objects.filter(workspace=workspace, key=key, category=category)
    if exclude is not None:
        clash = clash.exclude(id=exclude)
    if clash.exists():
        raise invalid_field("key", _clash_message(category, key))


def variable_check(*, workspace: Workspace, key: str, category: str, exclude: int | None = None) -> None:
    """Raises Invalid (naming `key`) when a variable `key` of `category` may not exist in
    `workspace`: a refused environment variable name, or a key already taken. The admin's
    form asks it too, so every door refuses the same keys with the same message."""
    if category == VariableCategory.ENV:
        problem = env_name_problem(key)
        if problem:
            raise invalid_field("key", problem)
    _check_free(workspace, key, category, exclude=exclude)


def _audit(actor: Any, action: str, variable: Variable) -> None:
    audit_record(actor=actor, action=action, obj=variable.workspace,
                 data={"key": variable.key, "category": variable.category, "sensitive": variable.sensitive})


def variable_create(*, workspace: Workspace, key: str, value: str, actor: Any,
                    category: str = VariableCategory.TERRAFORM, sensitive: bool = False) -> Variable:
    variable_check(workspace=workspace, key=key, category=category)
    variable = Variable(workspace=workspace, key=key, category=category, sensitive=sensitive)
    variable.set_value(value)
    with _unique(variable):
        variable.save()
    _audit(actor, "variable.create", variable)
    return variable


def variable_update(*, variable: Variable, actor: Any, changes: dict[str, Any]) -> Variable:
    """Apply `changes` (well-formed values of FIELDS; a missing `value` keeps the value)."""
    changes = dict(changes)
    unknown = set(changes) - set(FIELDS)
    if unknown:
        raise invalid_field(sorted(unknown)[0], "not a variable field")
    key = changes.get("key", variable.key)
    category = changes.get("category", variable.category)
    variable_check(workspace=variable.workspace, key=key, category=category, exclude=variable.id)
    if variable.sensitive and changes.get("sensitive") is False:
        raise invalid_field("sensitive", "a sensitive variable cannot be made non-sensitive: delete it and create it again")
    value: str | None = changes.pop("value", None)
    if value is None and changes.get("sensitive") and not variable.sensitive:
        value = variable.plain_value  # becoming sensitive: the same value, now as ciphertext
    for name, field_value in changes.items():
        setattr(variable, name, field_value)
    if value is not None:
        variable.set_value(value)
    with _unique(variable):
        variable.save()
    _audit(actor, "variable.update", variable)
    return variable


def variable_delete(*, variable: Variable, actor: Any) -> None:
    audit_record(actor=actor, action="variable.delete", obj=variable.workspace,
                 data={"key": variable.key, "category": variable.category})
    variable.delete()
