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
