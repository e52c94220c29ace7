"""The `static` backend: self-hosted agents, registered by hand with the pool token. Nothing
is managed: the list is empty (so the reconciler never touches a static pool's agents) and
creating or deleting a pod is refused."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agents_app.pods.backends import BackendPod, PodBackendError

if TYPE_CHECKING:
    from agents_app.models import AgentPool


class StaticBackend:
    def create(self, pool: AgentPool, name: str, *, pool_token: str) -> BackendPod:
        raise PodBackendError(
            f"pool '{pool.name}' uses the static backend: its agents are self-hosted and registered by hand "
            f"with the pool token; the platform does not start pods for it"
        )

    def delete(self, pool: AgentPool, name: str) -> None:
        raise PodBackendError(
            f"pool '{pool.name}' uses the static backend: the platform does not stop its self-hosted agents"
        )

    def list(self, pool: AgentPool) -> list[BackendPod]:
        return []
