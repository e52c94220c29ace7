"""A transition table as data: which states a thing may move to from each state. Pure Python,
shared by both apps' tables (jobs, slots and warmups in tasks_app/dispatch/states.py; pods in
agents_app/states.py), each applied by exactly one service function."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

E = TypeVar("E", bound=enum.StrEnum)


class IllegalTransition(Exception):
    def __init__(self, thing: str, current: str, target: str) -> None:
        super().__init__(f"a {thing} in state '{current}' cannot become '{target}'")
        self.thing = thing
        self.current = current
        self.target = target


@dataclass(frozen=True)
class Machine(Generic[E]):
    thing: str
    values: type[E]
    table: Mapping[E, frozenset[E]]

    def can(self, current: str, target: str) -> bool:
        return self.values(target) in self.table.get(self.values(current), frozenset())

    def check(self, current: str, target: str) -> None:
        if not self.can(current, target):
            raise IllegalTransition(self.thing, current, target)

    def is_final(self, state: str) -> bool:
        return not self.table.get(self.values(state))
