"""The autoscaler: per pool, compare the backend with the Pod rows (the reconciler), replace
pods that never registered, decide how many pods the pool needs (agents_app/scaling.py, pure)
and act, storing every decision with its inputs and reason (ScalingDecision).

It runs as a Celery beat task, once across replicas (a PostgreSQL advisory lock, like the
sweep's). It sits above `agent_reports` because a pod that vanished takes its agent offline
through `agent_reports.agent_set_offline` (its jobs and reservations handled as for any dead agent).

Removing a pod is safe against a claim racing it: in one transaction the agent row is locked
(claims lock it too), its slots are checked all idle, the pod becomes `draining` and the
agent offline, so no claim can land on it afterwards; agent_register refuses a draining pod's
agent. Only then is the backend asked to delete it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Max, Q
from django.utils import timezone

from agents_app.models import Agent, AgentPool, Pod, ScalingDecision
from agents_app.pods.backends import PodBackend, PodBackendError, backend_for, carries_our_labels
from agents_app.protocol import AgentStatus, JobKind, JobStatus, PodPhase, SlotState, WarmupStatus
from agents_app.scaling import DOWN, UP, PodView, ScalingInputs, decide
from agents_app.services.freeze import pool_frozen_until
from agents_app.services.pods import LIVE, pod_create_row, pod_locked, pod_new_name, pod_transition
from iacplatform import pool_events as events
from iacplatform.pglock import try_advisory_lock
from iacplatform.unit_of_work import unit_of_work
from tasks_app.dispatch.agent_reports import agent_set_offline
from tasks_app.dispatch.models import Job, Slot

log = logging.getLogger(__name__)

AUTOSCALE_LOCK = 0x1AC5CA1  # Postgres advisory lock id: one autoscaler tick at a time
# A row created this recently may not be in the backend's list yet (the list was taken
# before the create finished): not "vanished".
LIST_GRACE_SECONDS = 10


# --- the reconciler ------------------------------------------------------------------------


def _pod_gone(pod_id: int, *, message: str) -> None:
    with unit_of_work() as uow:
        pod = pod_locked(pod_id)
        if pod.phase == PodPhase.GONE:
            return
        pod_transition(pod, PodPhase.GONE, uow=uow, message=message)
        agent_id = pod.agent_id
    if agent_id is not None:
        agent_set_offline(agent_id=agent_id, reason=message)


def reconcile(pool: AgentPool, backend: PodBackend, *, now: datetime | None = None) -> dict[str, list[str]]:
    """Compare the backend's list with the Pod rows: adopt what is known (a row whose backend
    id was never recorded, e.g. the process died between create and save), mark `gone` what
    vanished (its agent goes offline), delete strays that carry our labels (a pod without a
    row, or whose row is gone). Never deletes what it did not create: the backend lists only
    pods carrying our labels for this pool, and each is checked again here."""
    now = now or timezone.now()
    listed = {p.name: p for p in backend.list(pool)}
    rows = {p.name: p for p in Pod.objects.filter(pool=pool).filter(Q(phase__in=LIVE + [PodPhase.DRAINING]) | Q(name__in=list(listed)))}
    done: dict[str, list[str]] = {"adopted": [], "gone": [], "strays_deleted": []}
    for name, found in listed.items():
        row = rows.get(name)
        if not carries_our_labels(found.labels, pool):
            continue  # never ours: never touched
        if row is None or row.phase == PodPhase.GONE:
            if found.phase != PodPhase.GONE:
                log.info("pool %s: deleting stray pod %s (carries our labels, no live row)", pool.name, name)
            backend.delete(pool, name)
            done["strays_deleted"].append(name)
            continue
        if found.phase == PodPhase.GONE or row.phase == PodPhase.DRAINING:
            # Forget what is left of it (a marker, a finished k8s pod), or finish a removal
            # whose delete failed last time.
            backend.delete(pool, name)
            why = "removed (its delete is done now)" if row.phase == PodPhase.DRAINING else "vanished from its backend"
            _pod_gone(row.id, message=f"pod {name} {why} ({pool.backend})")
            done["gone"].append(name)
            continue
        fields = {"last_seen_at": now}
        if row.backend_id != found.backend_id:
            fields["backend_id"] = found.backend_id
            if not row.backend_id:
                done["adopted"].append(name)
        Pod.objects.filter(id=row.id).update(**fields)
    for name, row in rows.items():
        if name in listed or row.phase == PodPhase.GONE:
            continue
        if (now - row.created_at).total_seconds() < LIST_GRACE_SECONDS:
            continue
        _pod_gone(row.id, message=f"pod {name} vanished from its backend ({pool.backend})")
        done["gone"].append(name)
    return done


def replace_unregistered(pool: AgentPool, backend: PodBackend, *, now: datetime) -> list[str]:
    """Pods whose agent has not registered within the pool's deadline are deleted; the
    decision that follows creates their replacements (they no longer count)."""
    cutoff = now - timedelta(seconds=pool.pod_register_deadline_seconds)
    replaced = []
    for pod in Pod.objects.filter(pool=pool, phase=PodPhase.PENDING, created_at__lt=cutoff):
        try:
            backend.delete(pool, pod.name)
        except PodBackendError as exc:
            log.warning("pool %s: could not delete unregistered pod %s: %s", pool.name, pod.name, exc)
            continue
        _pod_gone(pod.id, message=(f"its agent did not register within {pool.pod_register_deadline_seconds}s: "
                                   f"deleted and replaced"))
        replaced.append(pod.name)
    return replaced


# --- inputs ----------------------------------------------------------------------------------


def _pod_views(pool: AgentPool) -> list[PodView]:
    pods = list(Pod.objects.filter(pool=pool, phase__in=LIVE).order_by("created_at"))
    busy_agents = set(
        Slot.objects.filter(agent__pool=pool).exclude(state=SlotState.IDLE).values_list("agent_id", flat=True)
    )
    return [PodView(name=p.name, created_at=p.created_at, idle=p.agent_id not in busy_agents) for p in pods]


def scaling_inputs(pool: AgentPool, *, now: datetime, frozen: bool) -> ScalingInputs:
    jobs = Job.objects.filter(pool=pool)
    running = jobs.filter(status=JobStatus.RUNNING).count()
    queued = (jobs.filter(status=JobStatus.QUEUED).exclude(kind=JobKind.WARMUP)
              .exclude(hold_until__gt=now).count())
    reserved = Slot.objects.filter(
        agent__pool=pool, agent__status=AgentStatus.ONLINE, state=SlotState.RESERVED,
        task__warmup_status=WarmupStatus.READY, task__warmup_expires_at__gt=now,
        task__warmup_retry_count__lt=pool.warmup_max_retries,
    ).count()
    if jobs.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING]).exists():
        last_activity = now
    else:
        last_activity = jobs.aggregate(at=Max("finished_at"))["at"]
    return ScalingInputs(
        now=now, frozen=frozen, min_replicas=pool.min_replicas, max_replicas=pool.max_replicas,
        slots_per_pod=pool.slots_per_pod, running=running, queued=queued, reserved=reserved,
        pods=_pod_views(pool), last_activity_at=last_activity,
        scale_up_delay=pool.scale_up_delay_seconds, scale_down_delay=pool.scale_down_delay_seconds,
        cooldown=pool.cooldown_seconds, scale_down_wanted_since=pool.scale_down_wanted_since,
        warm_up_wanted_since=pool.warm_up_wanted_since, last_scaled_at=pool.last_scaled_at,
    )


# --- acting ----------------------------------------------------------------------------------


def pod_start(pool: AgentPool, backend: PodBackend, *, token: str, message: str) -> str:
    """A new pod: its row first (pending, no backend id), then the backend's create, then
    the id. A crash in between leaves a row the reconciler adopts, or deletes as vanished."""
    name = pod_new_name(pool)
    with unit_of_work() as uow:
        pod = pod_create_row(pool, uow=uow, name=name, backend_id="", message=message)
    try:
        created = backend.create(pool, name, pool_token=token)
    except PodBackendError as exc:
        _pod_gone(pod.id, message=f"the backend could not create it: {exc}")
        raise
    Pod.objects.filter(id=pod.id).update(backend_id=created.backend_id, last_seen_at=timezone.now())
    return name


def pod_remove(pool: AgentPool, backend: PodBackend, name: str, *, reason: str) -> bool:
    """Remove a pod whose slots are all idle; False (nothing done) when it is not idle any
    more. Busy and reserved pods are never removed."""
    with unit_of_work() as uow:
        pod = Pod.objects.select_for_update(no_key=True, of=("self",)).filter(pool=pool, name=name, phase__in=LIVE).first()
        if pod is None:
            return False
        if pod.agent_id is not None:
            # The agent row first (claims lock it), then its slots: nothing can be claimed
            # between this check and the agent going offline.
            agent = Agent.objects.select_for_update(no_key=True, of=("self",)).get(id=pod.agent_id)
            if Slot.objects.filter(agent=agent).exclude(state=SlotState.IDLE).exists():
                return False
        pod_transition(pod, PodPhase.DRAINING, uow=uow, message=reason)
        if pod.agent_id is not None:
            agent_set_offline(agent_id=pod.agent_id, reason=f"pod {name} removed by the autoscaler")
    backend.delete(pool, name)
    with unit_of_work() as uow:
        pod_transition(pod_locked(pod.id), PodPhase.GONE, uow=uow, message=reason)
    return True


def autoscale_pool(pool_id: int, *, now: datetime | None = None, frozen: bool = False) -> ScalingDecision | None:
    """One tick for one pool: reconcile, replace pods that never registered, decide, act,
    record. Static pools are not managed: nothing happens."""
    now = now or timezone.now()
    pool = AgentPool.objects.get(id=pool_id)
    if pool.backend == "static":
        return None
    backend = backend_for(pool)
    notes: list[str] = []
    created: list[str] = []
    deleted: list[str] = []
    try:
        seen = reconcile(pool, backend, now=now)
    except PodBackendError as exc:
        return _record(pool, "error", 0, 0, {}, [], [], f"the backend's list failed: {exc}")
    for what, names in seen.items():
        if names:
            notes.append(f"{what.replace('_', ' ')}: {', '.join(names)}")
    replaced = replace_unregistered(pool, backend, now=now)
    if replaced:
        notes.append(f"replaced (never registered within {pool.pod_register_deadline_seconds}s): {', '.join(replaced)}")
    inputs = scaling_inputs(pool, now=now, frozen=frozen)
    decision = decide(inputs)
    action = decision.action
    reason = decision.reason
    if action == UP:
        token = pool.plain_token()
        if not token:
            action = "error"
            reason += ("; but the pool's token is stored only as a hash (a pool from before pods): rotate the "
                       "pool's token so that the autoscaler can start agents with it")
        else:
            for _ in range(decision.create):
                try:
                    created.append(pod_start(pool, backend, token=token, message=decision.reason))
                except PodBackendError as exc:
                    action = "error"
                    reason += f"; creating a pod failed: {exc}"
                    break
    elif action == DOWN:
        for name in decision.delete:
            try:
                if pod_remove(pool, backend, name, reason=decision.reason):
                    deleted.append(name)
                else:
                    notes.append(f"{name} became busy: kept")
            except PodBackendError as exc:
                action = "error"
                reason += f"; deleting {name} failed: {exc}"
    if replaced and action == "none":
        action = "replace"
    fields: dict[str, Any] = {
        "scale_down_wanted_since": decision.scale_down_wanted_since,
        "warm_up_wanted_since": decision.warm_up_wanted_since,
    }
    if created or deleted:
        fields["last_scaled_at"] = now
    AgentPool.objects.filter(id=pool.id).update(**fields)
    if notes:
        reason += "; " + "; ".join(notes)
    seen_inputs = {k: v for k, v in asdict(inputs).items() if k not in ("pods",)}
    seen_inputs["pods"] = [{"name": p.name, "idle": p.idle} for p in inputs.pods]
    seen_inputs = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in seen_inputs.items()}
    return _record(pool, action, len(inputs.pods), decision.desired, seen_inputs, created, deleted, reason,
                   demand=inputs.demand)


def _record(pool: AgentPool, action: str, before: int, desired: int, inputs: dict, created: list[str],
            deleted: list[str], reason: str, *, demand: int = 0) -> ScalingDecision:
    with unit_of_work() as uow:
        decision = ScalingDecision.objects.create(
            pool=pool, action=action, pods_before=before, desired=desired, demand=demand, inputs=inputs,
            pods_created=created, pods_deleted=deleted, reason=reason,
        )
        # The pool page shows the latest decision and its reason, live.
        events.dispatch_changed(uow, pool_id=pool.id, subject="decision", subject_id=decision.id, state=action,
                                task_id=None)
    return decision


def autoscale(*, now: datetime | None = None) -> dict[str, Any]:
    """The beat task: every managed pool, one tick, once across replicas."""
    with try_advisory_lock(AUTOSCALE_LOCK) as got:
        if not got:
            return {"skipped": True}
        results: dict[str, Any] = {}
        for pool_id in AgentPool.objects.exclude(backend="static").values_list("id", flat=True):
            try:
                # A frozen pool wants no pods: idle ones go at once, busy ones (a running apply
                # finishes through a freeze) when they are idle.
                frozen = pool_frozen_until(pool_id, now) is not None
                decision = autoscale_pool(pool_id, now=now, frozen=frozen)
                results[str(pool_id)] = decision.action if decision else None
            except Exception as exc:  # noqa: BLE001 - one broken pool must not stop the others
                log.exception("autoscaling pool %s failed", pool_id)
                results[str(pool_id)] = f"error: {exc}"
    return results
