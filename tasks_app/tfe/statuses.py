"""Our run statuses as the TFE API names them (docs/architecture.md has the table). Pure:
tested without a database.

They do not map one to one. TFE's `planned` is a run waiting for a Confirm (ours:
`apply_pending`); a plan that will never apply is `planned_and_finished` (ours: `planned`
and `planned_no_changes`); a confirmed run not yet applying is `confirmed` (ours:
`apply_queued`). The plan and the apply of a run each have a status of their own, derived
from the run's and from whether it got that far (`plan_done`, `confirmed`)."""

from __future__ import annotations

import enum

from tasks_app.states import FINAL, PolicyStatus, RunStatus


class TfeRunStatus(enum.StrEnum):
    PENDING = "pending"
    PLAN_QUEUED = "plan_queued"
    PLANNING = "planning"
    PLANNED = "planned"
    PLANNED_AND_FINISHED = "planned_and_finished"
    CONFIRMED = "confirmed"
    APPLYING = "applying"
    APPLIED = "applied"
    DISCARDED = "discarded"
    CANCELED = "canceled"
    ERRORED = "errored"
    # A run with policies: checked, then (ours: apply_pending) passed, soft-failed or overridden.
    POLICY_CHECKING = "policy_checking"
    POLICY_CHECKED = "policy_checked"
    POLICY_SOFT_FAILED = "policy_soft_failed"
    POLICY_OVERRIDE = "policy_override"


class TfePhaseStatus(enum.StrEnum):
    """A plan's or an apply's status (go-tfe PlanStatus / ApplyStatus)."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    ERRORED = "errored"
    CANCELED = "canceled"
    UNREACHABLE = "unreachable"


S = RunStatus
T = TfeRunStatus

RUN_STATUS: dict[RunStatus, TfeRunStatus] = {
    S.PENDING: T.PENDING,
    S.PLAN_QUEUED: T.PLAN_QUEUED,
    S.PLANNING: T.PLANNING,
    S.POLICY_CHECKING: T.POLICY_CHECKING,
    S.PLANNED: T.PLANNED_AND_FINISHED,
    S.PLANNED_NO_CHANGES: T.PLANNED_AND_FINISHED,
    S.APPLY_PENDING: T.PLANNED,
    S.APPLY_QUEUED: T.CONFIRMED,
    S.APPLYING: T.APPLYING,
    S.APPLIED: T.APPLIED,
    S.DISCARDED: T.DISCARDED,
    S.CANCELLED: T.CANCELED,
    S.ERRORED: T.ERRORED,
}

# TFE -> ours, for filters (`?filter[status]=planned`): each TFE status names these of ours.
RUN_STATUS_BACK: dict[TfeRunStatus, frozenset[RunStatus]] = {
    tfe: frozenset(ours for ours, t in RUN_STATUS.items() if t == tfe) for tfe in TfeRunStatus
}

# Before a plan result: the plan is still to come or under way.
_PLAN_PHASE = {S.PENDING: TfePhaseStatus.PENDING, S.PLAN_QUEUED: TfePhaseStatus.QUEUED,
               S.PLANNING: TfePhaseStatus.RUNNING}
_APPLY_PHASE = {S.APPLY_QUEUED: TfePhaseStatus.QUEUED, S.APPLYING: TfePhaseStatus.RUNNING,
                S.APPLIED: TfePhaseStatus.FINISHED}


# A run waiting for Confirm, by its policy check (none: `planned`).
_APPLY_PENDING_BY_POLICY = {PolicyStatus.PASSED: T.POLICY_CHECKED, PolicyStatus.SOFT_FAILED: T.POLICY_SOFT_FAILED,
                            PolicyStatus.OVERRIDDEN: T.POLICY_OVERRIDE}


def tfe_run_status(status: str, policy_status: str = "") -> TfeRunStatus:
    if status == S.APPLY_PENDING and policy_status in _APPLY_PENDING_BY_POLICY:
        return _APPLY_PENDING_BY_POLICY[PolicyStatus(policy_status)]
    return RUN_STATUS[RunStatus(status)]


def plan_status(status: str, *, plan_done: bool) -> TfePhaseStatus:
    """The plan's status; `plan_done`: the run has a plan result (its plan file)."""
    run = RunStatus(status)
    if run in _PLAN_PHASE:
        return _PLAN_PHASE[run]
    if plan_done:
        return TfePhaseStatus.FINISHED
    if run == S.CANCELLED:
        return TfePhaseStatus.CANCELED
    if run == S.ERRORED:
        return TfePhaseStatus.ERRORED
    return TfePhaseStatus.UNREACHABLE


def apply_status(status: str, *, confirmed: bool) -> TfePhaseStatus:
    """The apply's status; `confirmed`: the run was confirmed (an apply was started for it)."""
    run = RunStatus(status)
    if run in _APPLY_PHASE:
        return _APPLY_PHASE[run]
    if confirmed and run == S.ERRORED:
        return TfePhaseStatus.ERRORED
    if confirmed and run == S.CANCELLED:
        return TfePhaseStatus.CANCELED
    if run in FINAL or run == S.DISCARDED:
        return TfePhaseStatus.UNREACHABLE  # it will never run
    return TfePhaseStatus.PENDING


def phase_done(status: TfePhaseStatus) -> bool:
    """The log reader stops at these (go-tfe's LogReader asks the phase once the log ends)."""
    return status in (TfePhaseStatus.FINISHED, TfePhaseStatus.ERRORED, TfePhaseStatus.CANCELED,
                      TfePhaseStatus.UNREACHABLE)


CANCELABLE: frozenset[RunStatus] = frozenset({S.PENDING, S.PLAN_QUEUED, S.PLANNING, S.APPLY_QUEUED, S.APPLYING})


def run_actions(status: str, policy_status: str = "") -> dict[str, bool]:
    """The run's `actions` (what its state allows; `permissions` say what the caller may). A
    soft-failed policy check makes it unconfirmable until it is overridden."""
    run = RunStatus(status)
    return {
        "is-cancelable": run in CANCELABLE,
        "is-confirmable": run == S.APPLY_PENDING and policy_status != PolicyStatus.SOFT_FAILED,
        "is-discardable": run == S.APPLY_PENDING,
        "is-force-cancelable": False,
    }
