"""The pod's transition table (pods are capacity: agents_app/services/pods.py `pod_transition`
applies it). Pure: tested without a database. Dispatch's tables (jobs, slots, warmups) are in
tasks_app/dispatch/states.py."""

from __future__ import annotations

from agents_app.protocol import PodPhase
from iacplatform.transitions import IllegalTransition, Machine

__all__ = ["POD", "IllegalTransition"]

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
