"""The dispatch core's state machines (jobs, slots, warmups), without a database."""

from __future__ import annotations

import pytest

from agents_app.protocol import JobStatus, SlotState, WarmupStatus
from tasks_app.dispatch.states import JOB, SLOT, WARMUP, IllegalTransition

J, S, W = JobStatus, SlotState, WarmupStatus


def walk(machine, path):
    for current, target in zip(path, path[1:]):
        machine.check(current, target)


@pytest.mark.parametrize(
    "path",
    [
        [J.QUEUED, J.RUNNING, J.SUCCEEDED],
        [J.QUEUED, J.RUNNING, J.FAILED],
        [J.QUEUED, J.RUNNING, J.CANCELLED],
        [J.QUEUED, J.CANCELLED],
        # The agent died before the job could change anything: queued again, run elsewhere.
        [J.QUEUED, J.RUNNING, J.QUEUED, J.RUNNING, J.SUCCEEDED],
    ],
)
def test_it_allows_the_job_paths(path):
    walk(JOB, path)
    assert JOB.is_final(path[-1])


@pytest.mark.parametrize(
    "current,target",
    [
        (J.QUEUED, J.SUCCEEDED),  # a job nobody ran cannot have succeeded
        (J.QUEUED, J.FAILED),
        (J.SUCCEEDED, J.RUNNING),  # a finished job is never run again
        (J.SUCCEEDED, J.QUEUED),
        (J.FAILED, J.QUEUED),  # an errored apply is never re-run automatically
        (J.CANCELLED, J.RUNNING),
        (J.SUCCEEDED, J.FAILED),
    ],
)
def test_it_refuses_illegal_job_transitions(current, target):
    assert not JOB.can(current, target)
    with pytest.raises(IllegalTransition, match=f"job in state '{current}' cannot become '{target}'"):
        JOB.check(current, target)


@pytest.mark.parametrize(
    "path",
    [
        [S.IDLE, S.RUNNING, S.IDLE],
        [S.IDLE, S.RUNNING, S.RESERVED, S.RUNNING, S.IDLE],  # plan keeps its dir; the apply takes it
        [S.IDLE, S.RUNNING, S.RESERVED, S.IDLE],  # released (expired, evicted, run ended)
    ],
)
def test_it_allows_the_slot_paths(path):
    walk(SLOT, path)


@pytest.mark.parametrize("current,target", [(S.IDLE, S.RESERVED), (S.IDLE, S.IDLE), (S.RUNNING, S.RUNNING),
                                            (S.RESERVED, S.RESERVED)])
def test_it_refuses_illegal_slot_transitions(current, target):
    # idle -> reserved: a reservation is a kept dir, and only a job that ran in the slot has one.
    assert not SLOT.can(current, target)
    with pytest.raises(IllegalTransition):
        SLOT.check(current, target)


@pytest.mark.parametrize(
    "path",
    [
        [W.NONE, W.READY, W.EXPIRED, W.WARMING, W.READY],  # plan kept its dir; expired; re-warmed
        [W.NONE, W.WARMING, W.NONE, W.WARMING, W.READY],  # one failed attempt, then ready
        [W.NONE, W.WARMING, W.FAILED],  # the last allowed attempt failed
        [W.NONE, W.READY, W.NONE, W.WARMING, W.READY],  # reservation released, warmed elsewhere
        [W.NONE, W.READY, W.EXPIRED, W.NONE],
    ],
)
def test_it_allows_the_warmup_paths(path):
    walk(WARMUP, path)


@pytest.mark.parametrize(
    "current,target",
    [
        (W.FAILED, W.WARMING),  # no loop of agents warming a broken run
        (W.FAILED, W.NONE),
        (W.FAILED, W.READY),
        (W.NONE, W.EXPIRED),  # only a ready dir can expire
        (W.WARMING, W.EXPIRED),
        (W.EXPIRED, W.READY),  # an expired dir is warmed up again before it is ready
        (W.READY, W.WARMING),
        (W.READY, W.FAILED),
    ],
)
def test_it_refuses_illegal_warmup_transitions(current, target):
    assert not WARMUP.can(current, target)
    with pytest.raises(IllegalTransition, match=f"warmup in state '{current}' cannot become '{target}'"):
        WARMUP.check(current, target)


def test_it_lets_nothing_leave_a_final_job_or_a_failed_warmup():
    for status in (J.SUCCEEDED, J.FAILED, J.CANCELLED):
        assert JOB.is_final(status)
    assert WARMUP.is_final(W.FAILED)
    assert not any(SLOT.is_final(s) for s in SlotState)  # a slot is reused forever


def test_it_covers_every_value_in_each_table():
    for machine, values in ((JOB, JobStatus), (SLOT, SlotState), (WARMUP, WarmupStatus)):
        reachable = set(machine.table) | {t for targets in machine.table.values() for t in targets}
        assert reachable == set(values), machine.thing
