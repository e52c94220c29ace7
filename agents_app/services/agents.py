"""Pools and agents: tokens, registration and liveness of the agent row. The one owner of
`Agent.status`. What an agent's arrival or death means for jobs and runs is decided above
this layer (tasks_app.dispatch.agent_reports), which calls these functions."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, transaction
from django.db.models import CharField, F, JSONField, Value
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Cast, Concat
from django.utils import timezone

from agents_app.models import POOL_LIMITS, Agent, AgentPool, Pod, hash_token, new_token
from agents_app.protocol import PROTOCOL_VERSION, AgentStatus, PodPhase, Registration, SlotState
from iacplatform import pool_events as events
from iacplatform import wakeups
from iacplatform.errors import Conflict, Gone, Invalid, PlatformError
from iacplatform.unit_of_work import UnitOfWork, unit_of_work
from tasks_app.dispatch.models import DispatchEvent, Slot

log = logging.getLogger(__name__)


def pool_create(*, name: str, **fields: Any) -> tuple[AgentPool, str]:
    """A new pool and its token. The token is kept as a hash (to check agents) and
    encrypted (the autoscaler gives it to the pods it starts)."""
    token, _ = new_token("pool")
    pool = AgentPool(name=name, **fields)
    pool.set_token(token)
    try:
        pool.full_clean(exclude=["token_hash", "teams"])
    except ValidationError as exc:
        raise Invalid(fields={k: list(v) for k, v in exc.message_dict.items()}) from exc
    pool.save()
    return pool, token


class PoolTokenRotated(PlatformError):
    """The pool token an agent registers with was rotated meanwhile (401): the agent needs the
    new token."""

    status = 401


# What a revoked agent token's hash becomes: never a SHA-256 hex digest, so no token matches it.
REVOKED_TOKEN_HASH = "revoked:"


def pool_rotate_token(*, pool: AgentPool) -> tuple[str, list[int]]:
    """A new token for the pool; in the same transaction, under the pool's row lock, every
    agent token of the pool is revoked (their next call is a 401: they must register again
    with the new token). Registration takes the same lock and checks the token under it
    (agent_register), so an agent registering with the old token meanwhile either finishes
    first, and is revoked here, or comes second and is refused. Returns the new token and
    the pool's agents, to be taken offline."""
    token, _ = new_token("pool")
    with transaction.atomic():
        locked = AgentPool.objects.select_for_update(no_key=True).get(pk=pool.pk)
        locked.set_token(token)
        locked.save(update_fields=["token_hash", "token_encrypted"])
        # A new statement, so a new snapshot (READ COMMITTED): it sees every agent whose
        # registration committed before we had the pool's lock.
        agents = Agent.objects.filter(pool=locked)
        agent_ids = list(agents.values_list("id", flat=True))
        agents.update(token_hash=Concat(Value(REVOKED_TOKEN_HASH), Cast("id", CharField())))
    pool.token_hash, pool.token_encrypted = locked.token_hash, locked.token_encrypted
    return token, agent_ids


def pool_by_token(token: str) -> AgentPool | None:
    return AgentPool.objects.filter(token_hash=hash_token(token)).first() if token else None


def pool_wake(pool_id: int) -> list[int]:
    """Work was queued (or a slot freed) in the pool: wake the long-polls of its online agents
    that have an idle slot to take it on, one query here instead of one claim in every agent's
    poll. On a busy pool most agents have none, and each such claim (if every queued run woke
    every agent) would take the agent's row lock and a database round trip while a pushed
    apply waits in Redis. An agent whose slot frees later is woken by its own result.
    Returns the agents woken. Runs after commits, where nothing may raise: when the query
    fails (PostgreSQL restarting), every agent of the pool is woken instead."""
    try:
        ids = list(
            Agent.objects.filter(pool_id=pool_id, status=AgentStatus.ONLINE, slots__state=SlotState.IDLE)
            .values_list("id", flat=True).distinct()
        )
    except DatabaseError:
        log.warning("pool %s: could not read which agents have an idle slot; waking them all", pool_id,
                    exc_info=True)
        wakeups.wake_pool(pool_id)
        return []
    wakeups.wake_agents(ids)
    return ids


def agent_by_token(token: str) -> Agent | None:
    return Agent.objects.select_related("pool").filter(token_hash=hash_token(token)).first() if token else None


def agent_set_status(agent: Agent, to: AgentStatus, *, uow: UnitOfWork, reason: str) -> None:
    """Move a locked agent between online and offline, saved now with its event row; the
    live update goes through `uow`."""
    if agent.status == to:
        return
    before = agent.status
    agent.status = to
    agent.offline_at = timezone.now() if to == AgentStatus.OFFLINE else None
    agent.save(update_fields=["status", "offline_at", "last_heartbeat_at", "version", "terraform_version", "slot_count"])
    DispatchEvent.objects.create(
        subject="agent", subject_id=agent.id, agent=agent, from_state=before, to_state=to, message=reason
    )
    events.dispatch_changed(uow, pool_id=agent.pool_id, subject="agent", subject_id=agent.id, state=to, task_id=None)


@dataclass(frozen=True)
class Registered:
    agent: Agent
    token: str
    resumed: bool  # the same agent as before a restart: its reservations may stand


def agent_register(*, pool: AgentPool, registration: Registration) -> Registered:
    """An agent process joins its pool.

    A process that presents the credential a previous process of the same agent kept in its
    work root is that agent again, even while the old record still looks online (a restart
    is faster than the offline timeout): it keeps its id and its reservations. A process
    with the same name but without the credential, while that record is online, is refused,
    never merged: two processes must not both answer for one agent's warm dirs."""
    reg = registration
    if reg.protocol_version != PROTOCOL_VERSION:
        raise Invalid(
            f"this agent speaks protocol version {reg.protocol_version or 'unknown'}; the server needs version "
            f"{PROTOCOL_VERSION}: run the agent of the same release as the server"
        )
    slot_count = reg.slots or pool.slots_per_pod
    low, high = POOL_LIMITS["slots_per_pod"]
    if not low <= slot_count <= high:
        # The protocol refuses such a `slots`; a pool's own slots_per_pod is bounded by the
        # same limits in the API and the admin, so this only catches a row edited by hand.
        raise Invalid(f"slots must be between {low} and {high} (pool '{pool.name}' has slots_per_pod {slot_count})")
    draining = Pod.objects.filter(pool=pool, name=reg.name, phase__in=[PodPhase.DRAINING, PodPhase.GONE]).first()
    if draining is not None:
        # The autoscaler chose this pod for removal (its slots were idle and its agent was
        # taken offline): it must not come back and claim work it would be killed during.
        raise Conflict(f"pod {reg.name} of pool '{pool.name}' is {draining.phase}: it is being removed")
    now = timezone.now()
    with unit_of_work() as uow:
        # The pool's row lock, which token rotation takes too (pool_rotate_token): checked
        # under it, the token `pool` was found by is still the pool's, and a rotation waiting
        # for the lock revokes the agent this registers once we commit.
        locked = AgentPool.objects.select_for_update(no_key=True).get(pk=pool.pk)
        if locked.token_hash != pool.token_hash:
            raise PoolTokenRotated(
                f"the token of pool '{pool.name}' was rotated while this agent registered: "
                f"register with the new pool token"
            )
        if reg.credential:
            agent = (
                Agent.objects.select_for_update(no_key=True)
                .filter(pool=pool, name=reg.name, token_hash=hash_token(reg.credential))
                .first()
            )
            if agent is not None:
                agent.last_heartbeat_at = now
                agent.version = reg.version
                agent.terraform_version = reg.terraform_version
                agent.slot_count = max(agent.slot_count, slot_count)
                # A restarted process counts its warm plan list's versions from 0 again.
                agent.warm_plans_version = 0
                if agent.status == AgentStatus.ONLINE:
                    agent.save(update_fields=["last_heartbeat_at", "version", "terraform_version", "slot_count",
                                              "warm_plans_version"])
                else:
                    agent_set_status(agent, AgentStatus.ONLINE, uow=uow, reason="registered again with its credential")
                have = set(agent.slots.values_list("index", flat=True))
                Slot.objects.bulk_create([Slot(agent=agent, index=i) for i in range(agent.slot_count) if i not in have])
                return Registered(agent=agent, token=reg.credential, resumed=True)
        online = Agent.objects.filter(pool=pool, name=reg.name, status=AgentStatus.ONLINE).first()
        if online is not None:
            silent = (now - online.last_heartbeat_at).total_seconds()
            raise Conflict(
                f"an agent named '{reg.name}' is already online in pool '{pool.name}' (last heartbeat {silent:.0f}s "
                f"ago). A restarted agent presents the credential kept in its work root; another process needs "
                f"another name, or must wait until the old one is offline "
                f"({settings.IAC_AGENT_OFFLINE_AFTER_SECONDS:g}s of silence)"
            )
        token, token_hash = new_token("agent")
        agent = Agent.objects.create(
            pool=pool, name=reg.name, token_hash=token_hash, slot_count=slot_count, version=reg.version,
            terraform_version=reg.terraform_version, last_heartbeat_at=now,
        )
        Slot.objects.bulk_create([Slot(agent=agent, index=i) for i in range(slot_count)])
        DispatchEvent.objects.create(
            subject="agent", subject_id=agent.id, agent=agent, to_state=AgentStatus.ONLINE, message="registered"
        )
    return Registered(agent=agent, token=token, resumed=False)


def agent_locked_online(agent_id: int) -> Agent:
    """The agent row, locked; Gone when it was declared offline (it must register again)."""
    agent = Agent.objects.select_for_update(no_key=True, of=("self",)).select_related("pool").get(id=agent_id)
    if agent.status != AgentStatus.ONLINE:
        raise Gone(f"agent {agent.name} was marked offline at {agent.offline_at}; register again")
    return agent


def agent_record_heartbeat(agent: Agent, *, warm_dirs: list[dict], provider_cache: dict | None = None,
                           warm_plan_workspaces: list[int] | None = None,
                           warm_plans_version: int | None = None) -> None:
    """What the (locked) agent's heartbeat says it holds; an older agent sends no cache
    counters or warm plan workspaces (None), which then stay as they were. A list older than
    the recorded one (a job's result sent a newer one while this heartbeat travelled) is
    left out."""
    agent.last_heartbeat_at = timezone.now()
    agent.warm_dirs = warm_dirs
    fields = ["last_heartbeat_at", "warm_dirs"]
    if provider_cache is not None:
        agent.provider_cache = provider_cache
        fields.append("provider_cache")
    if warm_plan_workspaces is not None and (warm_plans_version is None
                                             or warm_plans_version >= agent.warm_plans_version):
        agent.warm_plan_workspaces = sorted(set(warm_plan_workspaces))
        fields.append("warm_plan_workspaces")
        if warm_plans_version is not None:
            agent.warm_plans_version = warm_plans_version
            fields.append("warm_plans_version")
    agent.save(update_fields=fields)


def agent_record_warm_plans(agent: Agent, *, workspaces: list[int], version: int) -> None:
    """The agent's warm plan workspaces as a job's result sent them, unless a newer list is
    recorded. One conditional UPDATE in its own transaction, before the result takes its
    job and run locks: the run shows its plan only after its workspace's next plan can
    find this agent, and no lock is held that a heartbeat (agent row, then its jobs) waits
    for."""
    Agent.objects.filter(id=agent.id, warm_plans_version__lte=version).update(
        warm_plan_workspaces=sorted(set(workspaces)), warm_plans_version=version)


def agent_add_warm_plan(agent: Agent, *, workspace_id: int) -> None:
    """The agent kept the workspace's warm plan dir (an agent that sends no list with its
    result said so)."""
    # One UPDATE appending to the jsonb list. Run after the result's commit: its job and task
    # locks are gone, so it cannot deadlock with a heartbeat (agent row, then its jobs).
    Agent.objects.filter(id=agent.id).exclude(warm_plan_workspaces__contains=[workspace_id]).update(
        warm_plan_workspaces=CombinedExpression(F("warm_plan_workspaces"), "||",
                                                Value([workspace_id], output_field=JSONField()),
                                                output_field=JSONField()),
    )


def agents_silent() -> list[int]:
    """Online agents that have not been heard from for IAC_AGENT_OFFLINE_AFTER_SECONDS."""
    cutoff = timezone.now() - timedelta(seconds=settings.IAC_AGENT_OFFLINE_AFTER_SECONDS)
    return list(Agent.objects.filter(status=AgentStatus.ONLINE, last_heartbeat_at__lt=cutoff).values_list("id", flat=True))
