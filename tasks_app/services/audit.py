from __future__ import annotations

from typing import Any

from iacplatform.middleware import current_address
from iacplatform.unit_of_work import UnitOfWork
from tasks_app.models import AuditEvent


def audit_record(*, actor: Any, action: str, obj: Any, data: dict | None = None,
                 uow: UnitOfWork | None = None) -> AuditEvent:
    """One row per human action: who, what, when, and from which address (the request being
    served, see iacplatform.middleware). Written now, or with `uow`'s rows at its flush (a hot
    transaction's: Confirm)."""
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
    if uow is None:
        row.save(force_insert=True)
    else:
        uow.insert(row)
    return row
