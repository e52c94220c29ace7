"""Transition tables of the dispatch core: jobs, slots, warmups and pods. Pure: tested without a
database, like the run's table in tasks_app/states.py. Each table has exactly one service
function that applies it (see tasks_app/services/jobs.py, agents_app/services/slots.py and
tasks_app/services/warmups.py)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from agents_app.protocol import JobStatus, PodPhase, SlotState, WarmupStatus

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


J = JobStatus
JOB = Machine(
    "job",
    JobStatus,
    {
        # queued -> cancelled: the run was cancelled, discarded or confirmed before a claim.
        J.QUEUED: frozenset({J.RUNNING, J.CANCELLED}),
        # running -> queued: the agent died before the job could have changed anything (a
        # plan, or an apply it never acknowledged), so another agent may take it.
        J.RUNNING: frozenset({J.SUCCEEDED, J.FAILED, J.CANCELLED, J.QUEUED}),
    },
)

S = SlotState
SLOT = Machine(
    "slot",
    SlotState,
    {
        S.IDLE: frozenset({S.RUNNING}),
        # running -> reserved: the job kept its dir as a run's warm reservation.
        S.RUNNING: frozenset({S.IDLE, S.RESERVED}),
        # reserved -> running: the confirmed apply (or the run's own warmup-to-apply
        # hand-over) takes the reserved slot and its dir.
        S.RESERVED: frozenset({S.IDLE, S.RUNNING}),
    },
)

W = WarmupStatus
WARMUP = Machine(
    "warmup",
    WarmupStatus,
    {
        # none -> ready: the plan kept its own dir.
        W.NONE: frozenset({W.WARMING, W.READY}),
        # warming -> none: an attempt failed with retries left, or the run moved on.
        W.WARMING: frozenset({W.READY, W.NONE, W.FAILED}),
        # ready -> none: the reservation was released (agent offline, dir gone, the slot was
        # needed for a plan in a full pool, the run ended).
        W.READY: frozenset({W.EXPIRED, W.NONE}),
        W.EXPIRED: frozenset({W.WARMING, W.NONE}),
        # failed is final: no loop of agents warming a broken run; Confirm goes cold.
        W.FAILED: frozenset(),
    },
)

P = PodPhase
POD = Machine(
    "pod",
    PodPhase,
    {
        # pending -> gone: never registered within the pool's deadline (replaced), or vanished.
        P.PENDING: frozenset({P.RUNNING, P.DRAINING, P.GONE}),
        # running -> pending never: a restarted agent re-registers and the pod stays running.
        P.RUNNING: frozenset({P.DRAINING, P.GONE}),
        P.DRAINING: frozenset({P.GONE}),
        # gone is final: a pod name is never reused (names carry a random suffix).
        P.GONE: frozenset(),
    },
)
