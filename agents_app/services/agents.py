"""Agent registration, heartbeats and liveness."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agents_app.models import (
    Agent,
    AgentPool,
    AgentStatus,
    Slot,
    SlotState,
    hash_token,
    new_token,
)
from iacplatform import wakeups
from tasks_app.models import Job, JobStatus, Task
from tasks_app.services.jobs import AgentGone, job_abandon
from tasks_app.services.runs import reservation_release
from tasks_app.states import RunStatus, WarmupStatus


def pool_create(*, name: str, **fields: Any) -> tuple[AgentPool, str]:
    token, token_hash = new_token("pool")
    pool = AgentPool.objects.create(name=name, token_hash=token_hash, **fields)
    return pool, token


def pool_rotate_token(*, pool: AgentPool) -> str:
    token, pool.token_hash = new_token("pool")
    pool.save(update_fields=["token_hash"])
    return token


def pool_by_token(token: str) -> AgentPool | None:
    return AgentPool.objects.filter(token_hash=hash_token(token)).first()


def agent_by_token(token: str) -> Agent | None:
    return Agent.objects.select_related("pool").filter(token_hash=hash_token(token)).first()


def agent_register(*, pool: AgentPool, name: str, slot_count: int, version: str = "") -> tuple[Agent, str]:
    """A new agent process joins its pool. Warm dirs do not survive a restart, so a returning
    process is a new agent; the pool's apply_pending runs get warmed up on it."""
    from tasks_app.services.warmups import warmups_ensure

    token, token_hash = new_token("agent")
    with transaction.atomic():
        agent = Agent.objects.create(
            pool=pool, name=name, token_hash=token_hash, slot_count=slot_count, version=version,
            last_heartbeat_at=timezone.now(),
        )
        Slot.objects.bulk_create([Slot(agent=agent, index=i) for i in range(slot_count)])
        pool_id = pool.id
        transaction.on_commit(lambda: warmups_ensure(pool_id=pool_id))
    return agent, token


def agent_heartbeat(*, agent: Agent, warm_dirs: list[dict], running_jobs: list[int]) -> dict[str, Any]:
    """Renew the agent's leases and reconcile the server's reservations with its disk.

    Returns what the agent must do: `release` (task ids whose dirs it should delete) and
    `cancel` (jobs to stop)."""
    now = timezone.now()
    reported = {int(d["task"]) for d in warm_dirs if "task" in d}
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(id=agent.id)
        if agent.status != AgentStatus.ONLINE:
            raise AgentGone(f"agent {agent.name} was marked offline at {agent.offline_at}; register again")
        agent.last_heartbeat_at = now
        agent.warm_dirs = warm_dirs
        agent.save(update_fields=["last_heartbeat_at", "warm_dirs"])
        # Only the jobs the agent says it runs keep their lease: a job whose claim answer
        # was lost on the way never shows up here, and its lease runs out (see the sweep).
        Job.objects.filter(agent=agent, status=JobStatus.RUNNING, id__in=[int(j) for j in running_jobs]).update(
            lease_expires_at=now + timedelta(seconds=settings.IAC_AGENT_OFFLINE_AFTER_SECONDS)
        )
        held = set(
            Slot.objects.filter(agent=agent, task__isnull=False).values_list("task_id", flat=True)
        )
        release = sorted(reported - held)
        # A reservation whose dir the agent no longer has is released and warmed elsewhere.
        # The grace period covers a heartbeat built just before a plan/warmup reserved the slot.
        grace = now - timedelta(seconds=2 * settings.IAC_AGENT_HEARTBEAT_SECONDS + 1)
        lost = Slot.objects.filter(agent=agent, state=SlotState.RESERVED, updated_at__lt=grace).exclude(
            task_id__in=reported
        )
        lost_tasks = list(Task.objects.select_for_update().filter(id__in=lost.values("task_id")))
        for task in lost_tasks:
            reservation_release(task)
            task.warmup_message = f"{agent.name} no longer holds the warm dir"
            task.save()
        cancel = [
            {"id": j.id, "force": j.force_cancel}
            for j in Job.objects.filter(agent=agent, status=JobStatus.RUNNING, cancel_requested=True)
        ]
        if lost_tasks:
            from tasks_app.services.warmups import warmups_ensure

            pool_id = agent.pool_id
            transaction.on_commit(lambda: warmups_ensure(pool_id=pool_id))
    return {"release": release, "cancel": cancel, "heartbeat_interval": settings.IAC_AGENT_HEARTBEAT_SECONDS}


def agent_set_offline(*, agent_id: int, reason: str) -> bool:
    """Declare an agent dead. Its reservations are released (and re-warmed elsewhere while
    retries remain), its running plans are re-queued, its running applies become errored:
    an interrupted apply may have half-written state, so it is never re-run automatically."""
    from tasks_app.services.warmups import warmups_ensure

    with transaction.atomic():
        agent = Agent.objects.select_for_update().filter(id=agent_id, status=AgentStatus.ONLINE).first()
        if agent is None:
            return False
        now = timezone.now()
        agent.status = AgentStatus.OFFLINE
        agent.offline_at = now
        agent.save(update_fields=["status", "offline_at"])
        # Jobs first: a warmup in flight counts as a failed attempt before its run's
        # reservation is looked at.
        for job in Job.objects.select_for_update().filter(agent=agent, status=JobStatus.RUNNING):
            job_abandon(job, why=f"{agent.name} went offline ({reason})")
        for task in Task.objects.select_for_update().filter(
            warmup_agent=agent, status=RunStatus.APPLY_PENDING, warmup_status=WarmupStatus.READY
        ):
            reservation_release(task)
            task.warmup_message = f"{agent.name} went offline ({reason}); warming up elsewhere"
            task.save()
        Slot.objects.filter(agent=agent).update(state=SlotState.IDLE, job=None, task=None)
        pool_id = agent.pool_id
        transaction.on_commit(lambda: (warmups_ensure(pool_id=pool_id), wakeups.wake_pool(pool_id)))
    return True


def agents_mark_silent_offline() -> list[int]:
    cutoff = timezone.now() - timedelta(seconds=settings.IAC_AGENT_OFFLINE_AFTER_SECONDS)
    silent = list(
        Agent.objects.filter(status=AgentStatus.ONLINE, last_heartbeat_at__lt=cutoff).values_list("id", flat=True)
    )
    return [
        a for a in silent
        if agent_set_offline(agent_id=a, reason=f"no heartbeat for {settings.IAC_AGENT_OFFLINE_AFTER_SECONDS:g}s")
    ]
