"""Pod rows: the one owner of `Pod.phase` (pod_transition), their names, and what an agent's
registration means for its pod. Asking a backend to create or delete, and comparing its list
with these rows, is the autoscaler's (agents_app/services/autoscaler.py), one layer up."""

from __future__ import annotations

import secrets

from django.utils import timezone

from agents_app.models import Agent, AgentPool, Pod
from agents_app.protocol import PodPhase
from agents_app.states import POD
from iacplatform import pool_events as events
from iacplatform.unit_of_work import UnitOfWork, unit_of_work
from tasks_app.dispatch.models import DispatchEvent

LIVE = [PodPhase.PENDING, PodPhase.RUNNING]  # what counts as the pool's pods


def pod_new_name(pool: AgentPool) -> str:
    """`<pool>-<8 random hex digits>`: unique without asking anyone (two pods created in
    the same second never clash), and a valid Kubernetes name (lowercase, <= 63 chars)."""
    suffix = secrets.token_hex(4)
    return f"{pool.name[:50].lower().replace('_', '-').strip('-')}-{suffix}"


def pod_create_row(pool: AgentPool, *, uow: UnitOfWork, name: str, backend_id: str, message: str) -> Pod:
    """A new pending pod's row and event row, inserted now; the live update through `uow`."""
    pod = Pod.objects.create(pool=pool, name=name, backend=pool.backend, backend_id=backend_id,
                             last_seen_at=timezone.now(), message=message)
    DispatchEvent.objects.create(subject="pod", subject_id=pod.id, to_state=PodPhase.PENDING, message=message)
    events.dispatch_changed(uow, pool_id=pool.id, subject="pod", subject_id=pod.id, state=PodPhase.PENDING,
                            task_id=None)
    return pod


def pod_transition(pod: Pod, to: PodPhase, *, uow: UnitOfWork, message: str) -> None:
    """Move a locked pod to `to`: checks the table, saves and writes a DispatchEvent now; the
    live update goes through `uow`. The only writer of Pod.phase."""
    POD.check(pod.phase, to)
    before = pod.phase
    pod.phase = to
    pod.message = message
    fields = ["phase", "message"]
    if to == PodPhase.GONE:
        pod.gone_at = timezone.now()
        fields.append("gone_at")
    pod.save(update_fields=fields)
    DispatchEvent.objects.create(
        subject="pod", subject_id=pod.id, agent=pod.agent, from_state=before, to_state=to, message=message
    )
    events.dispatch_changed(uow, pool_id=pod.pool_id, subject="pod", subject_id=pod.id, state=to, task_id=None)


def pod_locked(pod_id: int) -> Pod:
    return Pod.objects.select_for_update(no_key=True, of=("self",)).select_related("agent").get(id=pod_id)


def pod_agent_registered(agent: Agent) -> None:
    """An agent registered: if it runs in one of the pool's pods (it is named like the pod),
    the pod is running and linked to it."""
    with unit_of_work() as uow:
        pod = (Pod.objects.select_for_update(no_key=True, of=("self",))
               .filter(pool_id=agent.pool_id, name=agent.name, phase__in=LIVE).first())
        if pod is None:
            return
        pod.agent = agent
        pod.registered_at = pod.registered_at or timezone.now()
        pod.save(update_fields=["agent", "registered_at"])
        if pod.phase == PodPhase.PENDING:
            pod_transition(pod, PodPhase.RUNNING, uow=uow, message=f"agent {agent.name} registered")
