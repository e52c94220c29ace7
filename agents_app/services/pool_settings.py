"""A pool's settings, changed by a site admin from the pool page: checked as a whole (each
field's bounds and the pool-wide rules of agents_app.models.pool_settings_problems), saved
under the pool's row lock, audited. The REST API (PATCH /api/v1/pools/<id>/) and the admin
have their own forms over the same model checks."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from agents_app import events
from agents_app.models import AgentPool
from iacplatform.errors import Invalid
from tasks_app.services.audit import audit_record

# What the pool page's form edits: sizing and scaling. The rest (bounds, Kubernetes, teams)
# stays in the admin and the API.
PAGE_FIELDS = (
    "min_replicas", "max_replicas", "slots_per_pod", "warm_apply", "scale_up_delay_seconds",
    "scale_down_delay_seconds", "cooldown_seconds", "warmup_expire_seconds",
)


def pool_settings_update(*, pool_id: int, actor: Any, fields: dict[str, Any]) -> AgentPool:
    unknown = set(fields) - set(PAGE_FIELDS)
    if unknown:
        raise Invalid(fields={name: ["not a setting of the pool page"] for name in sorted(unknown)})
    with transaction.atomic():
        pool = AgentPool.objects.select_for_update().get(id=pool_id)
        changed = {name: value for name, value in fields.items() if getattr(pool, name) != value}
        for name, value in changed.items():
            setattr(pool, name, value)
        try:
            pool.full_clean(exclude=["token_hash", "teams"])
        except ValidationError as exc:
            raise Invalid(fields={k: list(v) for k, v in exc.message_dict.items()}) from exc
        if not changed:
            return pool
        pool.save(update_fields=list(changed))
        audit_record(actor=actor, action="pool.update", obj=pool, data=changed)
        # The autoscaler reads the new bounds on its next tick; the pool's live pages now.
        events.dispatch_changed(pool_id=pool.id, subject="pool", subject_id=pool.id, state="updated", task_id=None)
    return pool
