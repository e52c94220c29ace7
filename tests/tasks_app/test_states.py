"""The run state machine, without a database."""

import pytest

from tasks_app.states import (
    BLOCKING,
    FINAL,
    TRANSITIONS,
    IllegalTransition,
    PolicyStatus,
    RunStatus,
    can_transition,
    check_policy_transition,
    check_transition,
    is_final,
)

S = RunStatus


@pytest.mark.parametrize(
    "path",
    [
        [S.PENDING, S.PLAN_QUEUED, S.PLANNING, S.PLANNED],
        [S.PENDING, S.PLAN_QUEUED, S.PLANNING, S.PLANNED_NO_CHANGES],
        [S.PENDING, S.PLAN_QUEUED, S.PLANNING, S.APPLY_PENDING, S.APPLY_QUEUED, S.APPLYING, S.APPLIED],
        [S.PENDING, S.PLAN_QUEUED, S.PLANNING, S.APPLY_PENDING, S.DISCARDED],
        [S.PENDING, S.PLAN_QUEUED, S.PLANNING, S.APPLY_PENDING, S.APPLY_QUEUED, S.DISCARDED],
        # The plan's agent died: the plan goes back to the queue and another agent takes it.
        [S.PENDING, S.PLAN_QUEUED, S.PLANNING, S.PLAN_QUEUED, S.PLANNING, S.PLANNED],
        [S.PENDING, S.CANCELLED],
    ],
)
def test_it_allows_the_lifecycle_paths(path):
    for current, target in zip(path, path[1:]):
        check_transition(current, target)
    assert is_final(path[-1])


@pytest.mark.parametrize(
    "current,target",
    [
        (S.APPLY_PENDING, S.APPLYING),  # an apply needs a Confirm first
        (S.PLANNING, S.APPLYING),
        (S.PENDING, S.PLANNING),  # a plan is queued for an agent before it runs
        (S.PLAN_QUEUED, S.APPLY_PENDING),
        (S.PENDING, S.APPLIED),
        (S.APPLIED, S.APPLYING),  # an applied run is never applied again
        (S.ERRORED, S.APPLY_QUEUED),
        (S.PLANNED, S.APPLY_PENDING),  # a plan-only run cannot be confirmed
        (S.APPLYING, S.DISCARDED),  # a running apply can be cancelled, not discarded
    ],
)
def test_it_refuses_illegal_transitions(current, target):
    assert not can_transition(current, target)
    with pytest.raises(IllegalTransition, match=f"'{current}' cannot become '{target}'"):
        check_transition(current, target)


def test_it_lets_nothing_leave_a_final_status():
    for status in FINAL:
        assert TRANSITIONS.get(status, frozenset()) == frozenset()


def test_it_can_error_or_cancel_every_live_status():
    for status, targets in TRANSITIONS.items():
        assert S.CANCELLED in targets, status
        assert S.ERRORED in targets or status == S.PENDING, status


def test_it_blocks_the_workspace_queue_only_while_an_apply_can_still_happen():
    assert BLOCKING == {S.PLAN_QUEUED, S.PLANNING, S.POLICY_CHECKING, S.APPLY_PENDING, S.APPLY_QUEUED, S.APPLYING}
    assert not BLOCKING & FINAL


def test_it_lets_a_policy_check_end_only_in_a_result_and_a_soft_failure_only_in_an_override():
    P = PolicyStatus
    check_policy_transition(P.NONE, P.CHECKING)
    for result in (P.PASSED, P.SOFT_FAILED, P.HARD_FAILED):
        check_policy_transition(P.CHECKING, result)
    check_policy_transition(P.SOFT_FAILED, P.OVERRIDDEN)
    for current, target in ((P.NONE, P.PASSED), (P.PASSED, P.OVERRIDDEN), (P.HARD_FAILED, P.OVERRIDDEN),
                            (P.OVERRIDDEN, P.SOFT_FAILED), (P.CHECKING, P.OVERRIDDEN)):
        with pytest.raises(IllegalTransition):
            check_policy_transition(current, target)


def test_it_checks_policies_only_between_the_plan_and_what_follows_it():
    assert S.POLICY_CHECKING in TRANSITIONS[S.PLANNING]
    assert TRANSITIONS[S.POLICY_CHECKING] == {S.APPLY_PENDING, S.PLANNED, S.CANCELLED, S.ERRORED}
