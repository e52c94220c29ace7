from __future__ import annotations

from typing import Any

from iacplatform.middleware import current_address
from iacplatform.row_batch import insert
from tasks_app.models import AuditEvent


def audit_record(*, actor: Any, action: str, obj: Any, data: dict | None = None) -> AuditEvent:
    """One row per human action: who, what, when, and from which address (the request being
    served, see iacplatform.middleware). Written at once, or with the history rows of a hot
    transaction (iacplatform.row_batch: Confirm)."""
    user = actor if getattr(actor, "is_authenticated", False) else None
    label = getattr(actor, "username", None) or (actor if isinstance(actor, str) else "system")
    row = AuditEvent(
        actor=user,
        actor_label=str(label),
        action=action,
        object_type=type(obj).__name__.lower(),
        object_id=str(obj.pk),
        data=data or {},
        address=current_address.get(),
    )
    insert(row)
    return row
