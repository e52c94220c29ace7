"""Slots: the one owner of `Slot.state` (tasks_app.dispatch.states.SLOT).

A slot is the source of truth for a warm reservation (state `reserved`, `task` set): the
run's warmup fields describe the warmup's lifecycle, never where the dir is. Callers hold
the slot's row lock (select_for_update) and the surrounding transaction.
"""

from __future__ import annotations

from typing import Any

from agents_app.protocol import SlotState
from iacplatform import pool_events as events
from iacplatform.unit_of_work import UnitOfWork
from tasks_app.dispatch.dispatch_log import dispatch_event
from tasks_app.dispatch.models import Slot
from tasks_app.dispatch.states import SLOT


def slot_transition(slot: Slot, to: SlotState, *, uow: UnitOfWork, job: Any = None, task: Any = None,
                    message: str = "") -> None:
    """Move a locked slot to `to` and save it now: running needs the job (and its task),
    reserved the task whose dir it keeps; idle clears both. Checks the table; the
    DispatchEvent and the live update go through `uow`."""
    SLOT.check(slot.state, to)
    before = slot.state
    task_id = slot.task_id
    if to == SlotState.RUNNING:
        slot.job, slot.task = job, task
    elif to == SlotState.RESERVED:
        slot.job = None
        if task is not None:
            slot.task = task
    else:
        slot.job, slot.task = None, None
    slot.state = to
    slot.save(update_fields=["state", "job", "task", "updated_at"])
    dispatch_event(
        uow, subject="slot", subject_id=slot.id, task_id=slot.task_id or task_id, agent_id=slot.agent_id,
        from_state=before, to_state=to, message=message,
    )
    events.dispatch_changed(
        uow, pool_id=getattr(getattr(slot, "agent", None), "pool_id", None), subject="slot", subject_id=slot.id,
        state=to, task_id=slot.task_id or task_id,
    )


def slot_of_job(job_id: int) -> Slot | None:
    """The slot running `job_id`, locked."""
    return Slot.objects.select_for_update(no_key=True, of=("self",)).select_related("agent").filter(job_id=job_id).first()


def slot_reserved_for(task_id: int, *, lock: bool = False) -> Slot | None:
    """The slot holding `task_id`'s warm dir (there is at most one: a unique constraint)."""
    qs = Slot.objects.select_for_update(no_key=True, of=("self",)) if lock else Slot.objects
    return qs.select_related("agent").filter(task_id=task_id, state=SlotState.RESERVED).first()


def slot_idle_of_agent(agent_id: int) -> Slot | None:
    """The agent's first idle slot, locked (SKIP LOCKED: a concurrent claim takes another)."""
    return (
        Slot.objects.select_for_update(no_key=True, skip_locked=True, of=("self",))
        .select_related("agent")
        .filter(agent_id=agent_id, state=SlotState.IDLE)
        .order_by("index")
        .first()
    )
