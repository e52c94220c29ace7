"""Transition tables of dispatch: jobs, slots and warmups. Pure: tested without a database,
like the run's table in tasks_app/states.py. Each table has exactly one service function that
applies it (tasks_app/dispatch/jobs.py `job_transition`, slots.py `slot_transition`,
warmups.py `warmup_transition`)."""

from __future__ import annotations

from agents_app.protocol import JobStatus, SlotState, WarmupStatus
from iacplatform.transitions import IllegalTransition, Machine

__all__ = ["JOB", "SLOT", "WARMUP", "IllegalTransition"]

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
