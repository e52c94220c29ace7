"""Celery tasks: thin wrappers that take ids and call services."""

from __future__ import annotations

from celery import shared_task
from django.db import connection, transaction

from agents_app.models import AgentPool
from agents_app.services.agents import agents_mark_silent_offline
from tasks_app.models import Task
from tasks_app.services.jobs import jobs_expire_leases
from tasks_app.services.runs import runs_start_next
from tasks_app.services.warmups import warmups_ensure, warmups_expire
from tasks_app.states import RunStatus

SWEEP_LOCK = 0x1AC5EE9  # Postgres advisory lock id: one sweep at a time across workers


@shared_task
def sweep() -> dict:
    """The control loop tick: liveness, warmup expiry, warmups, queue safety net."""
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_xact_lock(%s)", [SWEEP_LOCK])
            if not cur.fetchone()[0]:
                return {"skipped": True}
        offline = agents_mark_silent_offline()
        lost = jobs_expire_leases()
        expired = warmups_expire()
        for pool_id in AgentPool.objects.filter(warm_apply=True).values_list("id", flat=True):
            warmups_ensure(pool_id=pool_id)
        for ws_id in set(Task.objects.filter(status=RunStatus.PENDING).values_list("workspace_id", flat=True)):
            runs_start_next(workspace_id=ws_id)
    return {"offline": offline, "lost_jobs": lost, "expired": expired}
