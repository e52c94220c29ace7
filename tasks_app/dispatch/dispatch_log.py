"""The dispatch history's rows (DispatchEvent: job, slot, warmup moves), written through
iacplatform.row_batch: at once, or together at the end of a hot transaction's
`rows_batched()` block (a claim, a job's result, Confirm)."""

from __future__ import annotations

from typing import Any

from iacplatform.row_batch import insert
from tasks_app.dispatch.models import DispatchEvent


def dispatch_event(**fields: Any) -> None:
    """Record one DispatchEvent (the caller's transaction)."""
    insert(DispatchEvent(**fields))
