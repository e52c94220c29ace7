"""Freeze windows, managed: create, change, delete and lift early (site admins, through the
API and the admin). Each change is checked (agents_app.models.freeze_window_errors) and is
an audit event. What a change does to the pool's work (entering or leaving the freeze) is
the caller's after-commit call to tasks_app.services.sweep.pool_freeze_changed, and the
sweep's `freeze` step in any case. Each change is also published to the pool's live page
(iacplatform.pool_events.dispatch_changed, subject "freeze", after commit)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from agents_app.models import AgentPool, FreezeWindow, freeze_window_errors
from agents_app.services.freeze import moment_text, window_active_occurrence
from iacplatform import pool_events as events
from iacplatform.errors import Conflict, Invalid
from iacplatform.unit_of_work import UnitOfWork, unit_of_work
from tasks_app.services.audit import audit_record

EDITABLE = ("name", "reason", "kind", "enabled", "weekdays", "start_time", "end_time", "time_zone", "starts_at",
            "ends_at")


def _audit_data(window: FreezeWindow, fields: dict[str, Any]) -> dict[str, Any]:
    return {"pool": window.pool.name, "name": window.name,
            **{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in fields.items()}}


def _published(window: FreezeWindow, state: str, *, uow: UnitOfWork) -> None:
    events.dispatch_changed(uow, pool_id=window.pool_id, subject="freeze", subject_id=window.id, state=state, task_id=None)


def _check(window: FreezeWindow) -> None:
    errors = freeze_window_errors(window)
    if errors:
        raise Invalid(fields=errors)


def freeze_window_create(*, pool: AgentPool, actor: Any, fields: dict[str, Any]) -> FreezeWindow:
    unknown = set(fields) - set(EDITABLE)
    if unknown:
        raise Invalid(fields={name: ["not a field of a freeze window"] for name in sorted(unknown)})
    window = FreezeWindow(pool=pool, **fields)
    _check(window)
    with unit_of_work() as uow:
        window.save()
        audit_record(actor=actor, action="freeze_window.create", obj=window, data=_audit_data(window, fields))
        _published(window, "created", uow=uow)
    return window


def freeze_window_update(*, window: FreezeWindow, actor: Any, fields: dict[str, Any]) -> FreezeWindow:
    unknown = set(fields) - set(EDITABLE)
    if unknown:
        raise Invalid(fields={name: ["not a field of a freeze window"] for name in sorted(unknown)})
    with unit_of_work() as uow:
        window = FreezeWindow.objects.select_for_update().select_related("pool").get(id=window.id)
        for name, value in fields.items():
            setattr(window, name, value)
        _check(window)
        window.save()
        audit_record(actor=actor, action="freeze_window.update", obj=window, data=_audit_data(window, fields))
        _published(window, "updated", uow=uow)
    return window


def freeze_window_delete(*, window: FreezeWindow, actor: Any) -> None:
    with unit_of_work() as uow:
        audit_record(actor=actor, action="freeze_window.delete", obj=window, data=_audit_data(window, {}))
        _published(window, "deleted", uow=uow)
        window.delete()


def freeze_window_lift(*, window_id: int, actor: Any, reason: str, now: datetime | None = None) -> FreezeWindow:
    """End the window's active occurrence now (a site admin's decision, with a reason). The
    window's next occurrence freezes the pool again; another window may keep it frozen."""
    reason = (reason or "").strip()
    if not reason:
        raise Invalid(fields={"reason": ["lifting a freeze window needs a reason (it is audited)"]})
    now = now or timezone.now()
    with unit_of_work() as uow:
        window = FreezeWindow.objects.select_for_update().select_related("pool").get(id=window_id)
        occurrence = window_active_occurrence(window, now) if window.enabled else None
        if occurrence is None:
            raise Conflict(f"freeze window '{window.name}' is not active now: there is nothing to lift")
        window.lifted_at = now
        window.lifted_until = occurrence.end
        window.lifted_by = actor if getattr(actor, "is_authenticated", False) else None
        window.lift_reason = reason
        window.save(update_fields=["lifted_at", "lifted_until", "lifted_by", "lift_reason", "updated_at"])
        audit_record(actor=actor, action="freeze_window.lift", obj=window, data={
            "pool": window.pool.name, "name": window.name, "reason": reason,
            "would_have_ended": moment_text(occurrence.end),
        })
        _published(window, "lifted", uow=uow)
    return window
