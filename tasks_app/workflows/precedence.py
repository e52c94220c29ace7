"""Which value a run gets for each variable, and from where: HCP Terraform's precedence, in
one pure function (tested without a database).

From the strongest:
1. the run's own variables (the CLI's `-var`, through the TFE API);
2. priority variable sets, the more specific scope first (attached to the workspace, then
   the team's, then global);
3. the workspace's own variables;
4. the other variable sets, the more specific scope first.
Between two sets of the same scope and priority, the set whose name sorts first wins, as
HCP Terraform documents ("A_Variable_Set" over "B_Variable_Set").
Terraform and env variables are separate namespaces: a key wins within its category.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from tasks_app.workflows.states import VariableSetScope

RUN = "run"
WORKSPACE = "workspace"
SCOPES = list(VariableSetScope)  # most specific first


class _Value(Protocol):
    key: str
    category: str
    sensitive: bool

    @property
    def value(self) -> str: ...


@dataclass(frozen=True)
class SetValue:
    """A variable of a set that applies to the workspace, with what ranks it."""

    variable: _Value
    set_id: int
    set_name: str
    scope: str
    priority: bool


@dataclass(frozen=True)
class Resolved:
    key: str
    category: str
    sensitive: bool
    source: str  # RUN, WORKSPACE or "variable_set"
    variable_set: str = ""  # the set's name when source is "variable_set"
    set_id: int | None = None
    scope: str = ""
    priority: bool = False
    value: str = ""

    def described(self) -> dict[str, object]:
        """What the run page and API show: never the value."""
        return {"key": self.key, "category": self.category, "sensitive": self.sensitive, "source": self.source,
                "variable_set": self.variable_set, "variable_set_id": self.set_id, "scope": self.scope,
                "priority": self.priority}


def _set_rank(item: SetValue) -> tuple[int, str]:
    tier = 1 if item.priority else 1 + len(SCOPES) + 1
    return tier + SCOPES.index(VariableSetScope(item.scope)), item.set_name


WORKSPACE_RANK = 1 + len(SCOPES)


def resolve(*, workspace_variables: Iterable[_Value], set_variables: Iterable[SetValue],
            run_variables: dict[str, str]) -> list[Resolved]:
    """Every variable the run gets, one per (category, key), sorted by category and key."""
    best: dict[tuple[str, str], tuple[tuple[int, str], Resolved]] = {}

    def offer(rank: tuple[int, str], resolved: Resolved) -> None:
        slot = (resolved.category, resolved.key)
        if slot not in best or rank < best[slot][0]:
            best[slot] = (rank, resolved)

    for key, value in run_variables.items():
        offer((0, ""), Resolved(key=key, category="terraform", sensitive=False, source=RUN, value=value))
    for var in workspace_variables:
        offer((WORKSPACE_RANK, ""), Resolved(key=var.key, category=var.category, sensitive=var.sensitive,
                                             source=WORKSPACE, value=var.value))
    for item in set_variables:
        var = item.variable
        offer(_set_rank(item), Resolved(
            key=var.key, category=var.category, sensitive=var.sensitive, source="variable_set",
            variable_set=item.set_name, set_id=item.set_id, scope=item.scope, priority=item.priority,
            value=var.value))
    return [resolved for _, resolved in sorted(best.values(), key=lambda r: (r[1].category, r[1].key))]
