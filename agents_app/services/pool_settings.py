"""A pool's settings, changed by a site admin from the pool page: checked as a whole (each
field's bounds and the pool-wide rules of agents_app.models.pool_settings_problems), saved
under the pool's row lock, audited. The REST API (PATCH /api/v1/pools/<id>/) and the admin
have their own forms over the same model checks. And the pool token's rotation, audited,
which takes the pool's agents offline (above agent_reports for that)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from agents_app.models import AgentPool
from agents_app.services.agents import pool_rotate_token
from iacplatform import pool_events as events
from iacplatform.errors import Invalid
from iacplatform.unit_of_work import unit_of_work
from tasks_app.dispatch.agent_reports import agent_set_offline
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
    with unit_of_work() as uow:
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
        events.dispatch_changed(uow, pool_id=pool.id, subject="pool", subject_id=pool.id, state="updated", task_id=None)
    return pool


def pool_token_rotate(*, pool: AgentPool, actor: Any) -> str:
    """A new pool token; the old one stops working, and so do the tokens of the agents that
    registered with it, in the same transaction (a registration racing it loses:
    pool_rotate_token). Then they are taken offline (their work is handled as for any
    offline agent) and must register again with the new token. Returns the new token
    (shown once)."""
    with transaction.atomic():
        token, agent_ids = pool_rotate_token(pool=pool)
        audit_record(actor=actor, action="pool.rotate_token", obj=pool, data={"agents_revoked": len(agent_ids)})
    # Their tokens are dead already: what remains is what any agent's death means.
    for agent_id in agent_ids:
        agent_set_offline(agent_id=agent_id, reason="its pool's token was rotated")
    return token
