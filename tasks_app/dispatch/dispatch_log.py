"""The dispatch history's rows (DispatchEvent: job, slot, warmup moves), written with the
unit's other rows at its end (iacplatform/unit_of_work.py)."""

from __future__ import annotations

from typing import Any

from iacplatform.unit_of_work import UnitOfWork
from tasks_app.dispatch.models import DispatchEvent


def dispatch_event(uow: UnitOfWork, **fields: Any) -> None:
    """Record one DispatchEvent, at the unit's flush."""
    uow.insert(DispatchEvent(**fields))
