"""Warmup orchestration: keep a ready work dir for every apply_pending run of a warm pool.

One mechanism serves every trigger named in the design (plan finished without a
reservation, reserving agent offline, agent registered, warmup expired, reservation
released, Confirm dialog opened): the trigger resets the run's warmup to `none`/`expired`
and calls `warmups_ensure`, which queues a warmup job for each such run that has none.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from iacplatform import wakeups
from tasks_app.models import Job, JobKind, JobStatus, Task
from tasks_app.services.runs import reservation_release
from tasks_app.states import RunStatus, WarmupStatus


def warmups_ensure(*, pool_id: int) -> list[int]:
    """Queue a warmup job for each apply_pending run of the pool that needs one."""
    from agents_app.models import AgentPool

    pool = AgentPool.objects.get(id=pool_id)
    if not pool.warm_apply:
        return []
    created: list[int] = []
    with transaction.atomic():
        candidates = (
            Task.objects.select_for_update(skip_locked=True)
            .filter(
                workspace__pool_id=pool_id,
                status=RunStatus.APPLY_PENDING,
                warmup_status__in=[WarmupStatus.NONE, WarmupStatus.EXPIRED],
                warmup_retry_count__lt=settings.IAC_WARMUP_MAX_RETRIES,
            )
            .exclude(jobs__kind=JobKind.WARMUP, jobs__status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
            .order_by("id")
        )
        for task in candidates:
            Job.objects.create(task=task, pool_id=pool_id, kind=JobKind.WARMUP)
            created.append(task.id)
        if created:
            transaction.on_commit(lambda: wakeups.wake_pool(pool_id))
    return created


def warmups_expire() -> int:
    """Ready warm dirs past their expiry are released and warmed up again (not discarded)."""
    now = timezone.now()
    pools: set[int] = set()
    count = 0
    with transaction.atomic():
        for task in Task.objects.select_for_update(skip_locked=True, of=("self",)).select_related("workspace").filter(
            status=RunStatus.APPLY_PENDING, warmup_status=WarmupStatus.READY, warmup_expires_at__lte=now
        ):
            reservation_release(task, warmup_status=WarmupStatus.EXPIRED)
            task.warmup_message = f"warm dir expired at {now:%H:%M:%S}; warming up again"
            task.save()
            pools.add(task.workspace.pool_id)
            count += 1
    for pool_id in pools:
        warmups_ensure(pool_id=pool_id)
    return count


def run_prepare(*, task_id: int) -> Task:
    """The Confirm dialog was opened: make sure a warmup is on its way if the run is not ready."""
    task = Task.objects.select_related("workspace").get(id=task_id)
    if task.status == RunStatus.APPLY_PENDING and task.warmup_status in (WarmupStatus.NONE, WarmupStatus.EXPIRED):
        warmups_ensure(pool_id=task.workspace.pool_id)
        task.refresh_from_db()
    return task
