"""Celery tasks: thin wrappers that take ids and call services."""

from __future__ import annotations

import logging
import threading

from celery import shared_task
from celery.signals import worker_ready

from agents_app.services import autoscaler
from tasks_app.services import policy_checks
from tasks_app.services import sweep as control_loop
from tasks_app.services.policies import policy_engine
from tasks_app.vcs import tick as vcs_loop
from tasks_app.vcs import webhooks
from tasks_app.workflows import drift, notifications


@shared_task
def sweep() -> dict:
    """The control loop tick (see tasks_app.services.sweep.SWEEP_STEPS): liveness, leases, warmup expiry,
    warmups, room in full pools, the queue safety net, wake-ups. Steps are independent."""
    return control_loop.sweep()


@shared_task
def autoscale() -> dict:
    """The autoscaler tick (agents_app.services.autoscaler): reconcile pods, replace pods that
    never registered, scale each managed pool, record every decision."""
    return autoscaler.autoscale()


@shared_task
def vcs_tick() -> dict:
    """Deliveries nobody is processing, ls-remote polls due, reports the forges lack."""
    return vcs_loop.vcs_tick()


@shared_task
def vcs_delivery_process(delivery_id: int) -> str:
    """A webhook delivery, stored and answered: make its runs (at most once)."""
    return webhooks.delivery_process(delivery_id=delivery_id)


@shared_task
def notifications_deliver() -> dict:
    """Send the notifications that are due (tasks_app.workflows.notifications): stored first,
    retried with back-off, never sent inside a run's transaction."""
    return notifications.deliveries_send_due()


@shared_task
def drift_checks() -> list[int]:
    """Queue the drift checks whose scheduled moment came (tasks_app.workflows.drift)."""
    return drift.drift_checks_start()


@shared_task
def policy_check(task_id: int) -> bool:
    """Evaluate a run's plan against its policies (queued when the plan result arrives), in
    this worker's warm evaluator; the sweep makes up for a task that never came."""
    return policy_checks.policy_check_run(task_id=task_id)


@worker_ready.connect
def _warm_policy_evaluator(**_: object) -> None:
    """Start this worker's first evaluator now (in the background), so the first policy check
    does not pay the child's start."""
    threading.Thread(target=_warm, name="policy-evaluator-warmup", daemon=True).start()


def _warm() -> None:
    try:
        policy_engine().warm()
    except Exception:  # noqa: BLE001 - the first check starts it again
        logging.getLogger(__name__).warning("the policy evaluator did not start", exc_info=True)
