"""The `kubernetes` pod backend: one Kubernetes pod per agent, made with the official client.

Pods directly, never a Deployment: a Deployment's controller would pick which pod to delete
on a scale-down, and it would pick a busy or reserved one as readily as an idle one (the
design note's case for variant D). The reconciler names each pod and deletes exactly the one
the autoscaler chose.

- In the pool's namespace (`AgentPool.k8s_namespace`), labelled with `pod_labels()`; `list()`
  asks the API for those labels and checks them again on what comes back, so nothing that
  lacks our managed-by label and this pool's label is ever reported (and so never deleted).
- `restartPolicy: Never`: a pod whose agent died stays dead (phase Failed, reported `gone`)
  and the reconciler creates a new one under a new name. A restarted container would come
  back under the old name with an empty work root: a second life of one identity.
- The pool token lives in a Secret of the pool (`iac-pool-<id>-token`, created or updated
  here at each create) and reaches the agent as `IAC_POOL_TOKEN` through `secretKeyRef`:
  never in the pod spec, which anyone allowed to list pods can read.
- Every call has a timeout (`IAC_KUBERNETES_TIMEOUT_SECONDS`) and no client-side retry (the
  reconciler runs again at its next tick). Any failure is a `PodBackendError` whose message
  says what was tried, where, and what the API answered.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import urllib3
from django.conf import settings
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from agents_app.pods.backends import (
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    POOL_LABEL,
    BackendPod,
    PodBackendError,
    PodPhase,
    carries_our_labels,
    pod_labels,
)

if TYPE_CHECKING:
    from agents_app.models import AgentPool

AGENT_CONTAINER = "agent"
TOKEN_KEY = "token"
# The agent serves /healthz/live here (IAC_AGENT_HEALTH_PORT) for the pod's liveness probe.
AGENT_HEALTH_PORT = 8081

# Kubernetes pod phase -> what a backend reports. Unknown means the node stopped reporting:
# the pod may still run and hold jobs, so it is not `gone` (a replacement would be a second
# agent doing the same work); the agent's heartbeats decide whether it is alive.
_PHASES = {
    "Pending": PodPhase.PENDING,
    "Running": PodPhase.RUNNING,
    "Unknown": PodPhase.RUNNING,
    "Succeeded": PodPhase.GONE,
    "Failed": PodPhase.GONE,
}


def secret_name(pool: AgentPool) -> str:
    return f"iac-pool-{pool.id}-token"


def api_configuration() -> k8s.Configuration:
    """The client configuration from settings: an explicit API URL first, else the pod's
    service account (in a cluster), else a kubeconfig."""
    conf = k8s.Configuration()
    try:
        if settings.IAC_KUBERNETES_API_URL:
            conf.host = settings.IAC_KUBERNETES_API_URL
            if settings.IAC_KUBERNETES_TOKEN:
                conf.api_key = {"BearerToken": settings.IAC_KUBERNETES_TOKEN}
                conf.api_key_prefix = {"BearerToken": "Bearer"}
            conf.verify_ssl = settings.IAC_KUBERNETES_VERIFY_SSL
            if settings.IAC_KUBERNETES_CA_CERT:
                conf.ssl_ca_cert = settings.IAC_KUBERNETES_CA_CERT
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(client_configuration=conf)
        else:
            k8s_config.load_kube_config(config_file=settings.IAC_KUBECONFIG or None, client_configuration=conf)
    except (ConfigException, OSError) as exc:
        raise PodBackendError(
            f"kubernetes: no usable client configuration ({exc}). Set IAC_KUBERNETES_API_URL (and "
            "IAC_KUBERNETES_TOKEN), run the platform in the cluster with a service account, or "
            "point IAC_KUBECONFIG at a kubeconfig"
        ) from exc
    # No client-side retries: a failed call is reported at once and the reconciler, which
    # runs every tick, is the retry. urllib3's default would multiply every timeout by four.
    conf.retries = False
    return conf


def _api_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return (exc.body or "").strip()[:300] or str(exc.reason or "")


class KubernetesBackend:
    """Pods of a pool in its namespace. Stateless apart from the API client it builds on
    first use (from settings, see `api_configuration`)."""

    def __init__(self) -> None:
        self._api: k8s.CoreV1Api | None = None

    # -- the interface -------------------------------------------------------------------------
    def create(self, pool: AgentPool, name: str, *, pool_token: str) -> BackendPod:
        namespace = pool.k8s_namespace
        self._put_token_secret(pool, pool_token)
        pod = self._call(
            f"creating pod {name} in namespace {namespace}",
            lambda api, timeout: api.create_namespaced_pod(namespace, self.pod_manifest(pool, name),
                                                           _request_timeout=timeout),
            conflict=f"a pod named {name} already exists in namespace {namespace}",
        )
        return _backend_pod(pod)

    def delete(self, pool: AgentPool, name: str) -> None:
        namespace = pool.k8s_namespace
        # Only ever a pod we made: the name alone could be someone else's pod in a shared
        # namespace, so its labels are checked first.
        pod = self._call(
            f"reading pod {name} in namespace {namespace}",
            lambda api, timeout: api.read_namespaced_pod(name, namespace, _request_timeout=timeout),
            missing_ok=True,
        )
        if pod is None:
            return
        if not carries_our_labels(dict(pod.metadata.labels or {}), pool):
            raise PodBackendError(
                f"kubernetes: pod {name} in namespace {namespace} is not one of pool '{pool.name}''s pods "
                "(it lacks our labels); it was left alone"
            )
        self._call(
            f"deleting pod {name} in namespace {namespace}",
            lambda api, timeout: api.delete_namespaced_pod(name, namespace, _request_timeout=timeout),
            missing_ok=True,
        )

    def list(self, pool: AgentPool) -> list[BackendPod]:
        namespace = pool.k8s_namespace
        selector = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{POOL_LABEL}={pool.id}"
        pods = self._call(
            f"listing the pods of pool '{pool.name}' in namespace {namespace}",
            lambda api, timeout: api.list_namespaced_pod(namespace, label_selector=selector,
                                                         _request_timeout=timeout),
        )
        # The selector is asked of the API and checked again here: what we report is what the
        # reconciler may delete, so it must never rest on the server honouring a selector.
        return [_backend_pod(p) for p in pods.items or [] if carries_our_labels(dict(p.metadata.labels or {}), pool)]

    # -- what a pod of the pool looks like -------------------------------------------------------
    def pod_manifest(self, pool: AgentPool, name: str) -> k8s.V1Pod:
        resources: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
        for kind, field in (("requests", "request"), ("limits", "limit")):
            for resource in ("cpu", "memory"):
                value = getattr(pool, f"k8s_{resource}_{field}")
                if value:
                    resources[kind][resource] = value
        container = k8s.V1Container(
            name=AGENT_CONTAINER,
            image=pool.k8s_image,
            command=["python", "-m", "agents_app.agent", "--server", settings.IAC_AGENT_URL,
                     "--name", name, "--slots", str(pool.slots_per_pod)],
            env=[
                k8s.V1EnvVar(name="IAC_POOL_TOKEN", value_from=k8s.V1EnvVarSource(
                    secret_key_ref=k8s.V1SecretKeySelector(name=secret_name(pool), key=TOKEN_KEY))),
                k8s.V1EnvVar(name="IAC_AGENT_HEALTH_PORT", value=str(AGENT_HEALTH_PORT)),
                k8s.V1EnvVar(name="IAC_AGENT_HEALTH_HOST", value="0.0.0.0"),
            ],
            resources=k8s.V1ResourceRequirements(requests=resources["requests"] or None,
                                                 limits=resources["limits"] or None),
            liveness_probe=k8s.V1Probe(
                http_get=k8s.V1HTTPGetAction(path="/healthz/live", port=AGENT_HEALTH_PORT),
                period_seconds=30, failure_threshold=3,
            ),
        )
        return k8s.V1Pod(
            api_version="v1",
            kind="Pod",
            metadata=k8s.V1ObjectMeta(name=name, namespace=pool.k8s_namespace, labels=pod_labels(pool, name)),
            spec=k8s.V1PodSpec(
                containers=[container],
                restart_policy="Never",
                service_account_name=pool.k8s_service_account or None,
                # The agent talks to the platform over HTTP, never to the Kubernetes API; a
                # mounted service account token would be readable by terraform (user code)
                # in the pod, and the NetworkPolicy lets it reach a public API endpoint.
                # (Cloud identity, e.g. EKS's IRSA, injects its own projected token volume.)
                automount_service_account_token=False,
                node_selector=dict(pool.k8s_node_selector) or None,
                # The agent stops claiming on SIGTERM and finishes what it runs; an apply
                # is never deleted by the autoscaler, so this only bounds a plan's wind-down.
                termination_grace_period_seconds=60,
            ),
        )

    # -- plumbing ----------------------------------------------------------------------------
    def _put_token_secret(self, pool: AgentPool, token: str) -> None:
        namespace = pool.k8s_namespace
        name = secret_name(pool)
        body = k8s.V1Secret(
            api_version="v1", kind="Secret", type="Opaque",
            metadata=k8s.V1ObjectMeta(name=name, namespace=namespace,
                                      labels={MANAGED_BY_LABEL: MANAGED_BY_VALUE, POOL_LABEL: str(pool.id)}),
            string_data={TOKEN_KEY: token},
        )
        # Patched at each create (the pool's token may have been rotated since), created when
        # missing: one call in the usual case.
        patched = self._call(
            f"updating secret {name} in namespace {namespace}",
            lambda api, timeout: api.patch_namespaced_secret(name, namespace, {"stringData": {TOKEN_KEY: token}},
                                                             _request_timeout=timeout),
            missing_ok=True,
        )
        if patched is None:
            self._call(
                f"creating secret {name} in namespace {namespace}",
                lambda api, timeout: api.create_namespaced_secret(namespace, body, _request_timeout=timeout),
            )

    def _client(self) -> k8s.CoreV1Api:
        if self._api is None:
            self._api = k8s.CoreV1Api(k8s.ApiClient(api_configuration()))
        return self._api

    def _call(self, what: str, call: Callable[[k8s.CoreV1Api, float], Any], *, missing_ok: bool = False,
              conflict: str = "") -> Any:
        """`call(api, timeout)`; any failure becomes a PodBackendError saying `what` failed,
        where, and what the API answered (a 404 is None with `missing_ok`)."""
        api = self._client()
        host = api.api_client.configuration.host
        timeout = settings.IAC_KUBERNETES_TIMEOUT_SECONDS
        try:
            return call(api, timeout)
        except ApiException as exc:
            if exc.status == 404 and missing_ok:
                return None
            if exc.status == 409 and conflict:
                raise PodBackendError(f"kubernetes: {conflict} (HTTP 409 Conflict: {_api_message(exc)})") from exc
            status = f"HTTP {exc.status} {exc.reason or ''}".strip() if exc.status else "no answer"
            raise PodBackendError(f"kubernetes: {what} failed: {status}: {_api_message(exc)}") from exc
        except (urllib3.exceptions.TimeoutError, urllib3.exceptions.MaxRetryError) as exc:
            cause = getattr(exc, "reason", None) or exc
            # NewConnectionError (refused, no route, DNS) subclasses the connect timeout.
            if isinstance(cause, urllib3.exceptions.TimeoutError) and not isinstance(
                cause, urllib3.exceptions.NewConnectionError
            ):
                raise PodBackendError(
                    f"kubernetes: {what} failed: the API at {host} did not answer within {timeout:g} s "
                    "(IAC_KUBERNETES_TIMEOUT_SECONDS)"
                ) from exc
            raise PodBackendError(f"kubernetes: {what} failed: cannot reach the API at {host} ({cause})") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise PodBackendError(f"kubernetes: {what} failed: cannot reach the API at {host} ({exc})") from exc


def _backend_pod(pod: k8s.V1Pod) -> BackendPod:
    meta = pod.metadata
    phase = _PHASES.get(pod.status.phase if pod.status and pod.status.phase else "Pending", PodPhase.PENDING)
    if meta.deletion_timestamp:  # terminating: on its way out, never to be counted again
        phase = PodPhase.GONE
    return BackendPod(name=meta.name, backend_id=meta.uid or meta.name, phase=phase, labels=dict(meta.labels or {}))
