"""Reads of the variable sets that apply to a workspace: for a job's payload
(tasks_app/dispatch/job_payloads.py, which also gives the job the ciphertexts it masks with),
the server's masking (tasks_app/redaction.py) and the workspace page. Reads only."""

from __future__ import annotations

from typing import Any

from django.db.models import Exists, OuterRef, Q
from django.db.models.expressions import Combinable

from tasks_app.models import AccessLevel, WorkspaceAccess
from tasks_app.workflows.models import VariableSet, VariableSetVariable
from tasks_app.workflows.precedence import SetValue
from tasks_app.workflows.states import VariableSetScope


def applies_to(workspace_id: Combinable | int, prefix: str = "") -> Q:
    """The sets (through `prefix`, e.g. "variable_set__") that apply to the workspace: global
    ones, those attached to it, and team ones whose team administers it."""
    attached = VariableSet.workspaces.through.objects.filter(
        variableset_id=OuterRef(f"{prefix}id" if prefix else "id"), workspace_id=workspace_id)
    administers = WorkspaceAccess.objects.filter(
        team_id=OuterRef(f"{prefix}team_id" if prefix else "team_id"), workspace_id=workspace_id,
        level=AccessLevel.ADMIN)
    return (Q(**{f"{prefix}scope": VariableSetScope.GLOBAL})
            | (Q(**{f"{prefix}scope": VariableSetScope.WORKSPACES}) & Exists(attached))
            | (Q(**{f"{prefix}scope": VariableSetScope.TEAM}) & Exists(administers)))


def sets_applying(workspace_id: int) -> Any:
    return VariableSet.objects.filter(applies_to(workspace_id)).order_by("name")


def set_values_for(workspace_id: int) -> list[SetValue]:
    """The variables of the sets that apply to the workspace (a query of their own)."""
    rows = (VariableSetVariable.objects.filter(variable_set__in=sets_applying(workspace_id))
            .select_related("variable_set"))
    return [SetValue(variable=v, set_id=v.variable_set_id, set_name=v.variable_set.name,
                     scope=v.variable_set.scope, priority=v.variable_set.priority) for v in rows]
