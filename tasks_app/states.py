"""Run statuses and the legal transitions between them. Pure: tested without a database."""

from __future__ import annotations

from django.db import models

from agents_app.protocol import ApplyPath, WarmupStatus  # noqa: F401  (re-exported for the run's readers)


class RunStatus(models.TextChoices):
    PENDING = "pending"
    # A plan job exists but no agent has claimed it yet: the run says why it waits.
    PLAN_QUEUED = "plan_queued"
    PLANNING = "planning"
    # The plan is stored; the workspace's policies are being evaluated against it (a worker
    # process, tasks_app.services.policy_checks). Runs of workspaces without policies skip it.
    POLICY_CHECKING = "policy_checking"
    PLANNED = "planned"
    PLANNED_NO_CHANGES = "planned_no_changes"
    APPLY_PENDING = "apply_pending"
    APPLY_QUEUED = "apply_queued"
    APPLYING = "applying"
    APPLIED = "applied"
    DISCARDED = "discarded"
    CANCELLED = "cancelled"
    ERRORED = "errored"


class Operation(models.TextChoices):
    PLAN = "plan"
    PLAN_AND_APPLY = "plan_and_apply"


S = RunStatus

TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    S.PENDING: frozenset({S.PLAN_QUEUED, S.CANCELLED, S.DISCARDED, S.ERRORED}),
    S.PLAN_QUEUED: frozenset({S.PLANNING, S.CANCELLED, S.ERRORED}),
    # planning -> plan_queued: the plan's agent died; the plan job went back to the queue.
    S.PLANNING: frozenset({S.PLAN_QUEUED, S.PLANNED, S.PLANNED_NO_CHANGES, S.APPLY_PENDING, S.POLICY_CHECKING,
                           S.CANCELLED, S.ERRORED}),
    # policy_checking -> errored: a hard-mandatory policy failed; -> planned: a plan-only run.
    S.POLICY_CHECKING: frozenset({S.APPLY_PENDING, S.PLANNED, S.CANCELLED, S.ERRORED}),
    S.APPLY_PENDING: frozenset({S.APPLY_QUEUED, S.DISCARDED, S.CANCELLED, S.ERRORED}),
    # apply_queued -> discarded: the plan turned out stale when the apply was about to start.
    S.APPLY_QUEUED: frozenset({S.APPLYING, S.DISCARDED, S.CANCELLED, S.ERRORED}),
    S.APPLYING: frozenset({S.APPLIED, S.CANCELLED, S.ERRORED}),
}

FINAL: frozenset[RunStatus] = frozenset(
    {S.PLANNED, S.PLANNED_NO_CHANGES, S.APPLIED, S.DISCARDED, S.CANCELLED, S.ERRORED}
)

# While an applyable run is in one of these, later applyable runs of the workspace wait.
BLOCKING: frozenset[RunStatus] = frozenset(
    {S.PLAN_QUEUED, S.PLANNING, S.POLICY_CHECKING, S.APPLY_PENDING, S.APPLY_QUEUED, S.APPLYING})


class IllegalTransition(Exception):
    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"a run in status '{current}' cannot become '{target}'")
        self.current = current
        self.target = target


def can_transition(current: str, target: str) -> bool:
    return RunStatus(target) in TRANSITIONS.get(RunStatus(current), frozenset())


def check_transition(current: str, target: str) -> None:
    if not can_transition(current, target):
        raise IllegalTransition(current, target)


def is_final(status: str) -> bool:
    return RunStatus(status) in FINAL


# --- policy checks (tasks_app.services.policy_checks) -------------------------------------


class PolicyStatus(models.TextChoices):
    """A run's policy check, as the Confirm gate reads it from the run's own row."""

    NONE = "", "no policies"
    CHECKING = "checking"
    PASSED = "passed"  # every mandatory policy passed (advisory ones may have failed: reported)
    SOFT_FAILED = "soft_failed"  # Confirm is refused until a workspace admin overrides
    OVERRIDDEN = "overridden"
    HARD_FAILED = "hard_failed"  # the run errored


class EnforcementLevel(models.TextChoices):
    ADVISORY = "advisory"
    SOFT_MANDATORY = "soft-mandatory"
    HARD_MANDATORY = "hard-mandatory"


P = PolicyStatus

POLICY_TRANSITIONS: dict[PolicyStatus, frozenset[PolicyStatus]] = {
    P.NONE: frozenset({P.CHECKING}),
    P.CHECKING: frozenset({P.PASSED, P.SOFT_FAILED, P.HARD_FAILED}),
    P.SOFT_FAILED: frozenset({P.OVERRIDDEN}),
}


def check_policy_transition(current: str, target: str) -> None:
    if PolicyStatus(target) not in POLICY_TRANSITIONS.get(PolicyStatus(current), frozenset()):
        raise IllegalTransition(current, target)
