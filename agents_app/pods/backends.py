"""The one interface every pod backend implements: create, delete and list a pool's pods.

A backend knows nothing about Pod rows, phases or scaling: it starts and stops agents and
reports what runs. The reconciler (agents_app/services/pods.py) compares `list()` with the
Pod rows; the autoscaler decides how many there should be.

Every backend labels what it creates with `LABELS` (managed-by, pool, pod) and `list()`
returns only what carries our managed-by label and this pool's label: a backend never
reports, and so the reconciler never deletes, anything it did not create.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from django.utils.module_loading import import_string

from iacplatform.errors import PlatformError

if TYPE_CHECKING:
    from agents_app.models import AgentPool

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "iacplatform"
POOL_LABEL = "iac.platform/pool"
POD_LABEL = "iac.platform/pod"


def pod_labels(pool: AgentPool, name: str) -> dict[str, str]:
    """The labels every backend puts on a pod it creates (LABELS of the interface)."""
    return {MANAGED_BY_LABEL: MANAGED_BY_VALUE, POOL_LABEL: str(pool.id), POD_LABEL: name}


def carries_our_labels(labels: dict[str, str], pool: AgentPool) -> bool:
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE and labels.get(POOL_LABEL) == str(pool.id)


class PodPhase:
    """What a backend can say about one of its pods (the Pod row's own phase has `draining`
    too, which only the platform knows)."""

    PENDING = "pending"
    RUNNING = "running"
    GONE = "gone"


@dataclass(frozen=True)
class BackendPod:
    name: str  # our Pod.name
    backend_id: str  # pid for local, the k8s pod uid for kubernetes
    phase: str  # "pending" | "running" | "gone"
    labels: dict[str, str] = field(default_factory=dict)


class PodBackendError(PlatformError):
    """The backend could not do what was asked (API down, name clash, spawn failed, a static
    pool asked to create). The message says what and where; the reconciler records it."""

    status = 503


class PodBackend(Protocol):
    def create(self, pool: AgentPool, name: str, *, pool_token: str) -> BackendPod: ...

    def delete(self, pool: AgentPool, name: str) -> None:
        """Idempotent: a pod already gone is fine."""
        ...

    def list(self, pool: AgentPool) -> list[BackendPod]:
        """Only the pods carrying OUR labels for this pool."""
        ...


# By dotted path, as Django names its backends: each module imports this one for the types
# above, and a backend's client (the kubernetes package) is loaded only by pools that use it.
BACKENDS = {
    "local": "agents_app.pods.local.LocalBackend",
    "kubernetes": "agents_app.pods.kubernetes.KubernetesBackend",
    "static": "agents_app.pods.static.StaticBackend",
}


def backend_for(pool: AgentPool) -> PodBackend:
    """The backend of `pool.backend` (local | kubernetes | static)."""
    path = BACKENDS.get(pool.backend)
    if path is None:
        raise PodBackendError(f"pool '{pool.name}': unknown pod backend '{pool.backend}'")
    return import_string(path)()
