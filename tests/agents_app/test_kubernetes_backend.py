"""The `kubernetes` pod backend, driven by the real `kubernetes` client over HTTP against
kmock's Kubernetes API emulator (tests/kube.py). The backend is the one `backend_for()` picks
for a kubernetes pool, configured from settings (IAC_KUBERNETES_API_URL) like in production.

The emulator ignores label selectors, so these tests put pods of other pools and foreign pods
in the same namespace: what the backend reports must still be only this pool's own pods."""

from __future__ import annotations

import asyncio
import base64
import json
import socket

import pytest
import yaml
from kubernetes import client as k8s

from agents_app.pods.backends import PodBackendError, backend_for
from agents_app.pods.kubernetes import KubernetesBackend, secret_name
from tests.factories import make_pool
from tests.kube import KubeAPI, kube_api

pytestmark = pytest.mark.django_db

NS = "iac-agents"
OURS = "app.kubernetes.io/managed-by"


@pytest.fixture
def kube(settings):
    with kube_api() as api:
        settings.IAC_KUBERNETES_API_URL = api.url
        settings.IAC_KUBERNETES_TIMEOUT_SECONDS = 0.5
        settings.IAC_AGENT_URL = "http://iac-web.iac.svc:8000"
        yield api


@pytest.fixture
def kpool():
    pool, _token = make_pool(
        backend="kubernetes", k8s_namespace=NS, k8s_image="registry.example/iac-agent:1.4", slots_per_pod=3,
        k8s_cpu_request="250m", k8s_cpu_limit="2", k8s_memory_request="256Mi", k8s_memory_limit="1Gi",
        k8s_service_account="iac-agent", k8s_node_selector={"kubernetes.io/arch": "amd64"},
    )
    return pool


def names(pods) -> list[str]:
    return sorted(p.name for p in pods)


def raw_pod(kube: KubeAPI, name: str, labels: dict[str, str], namespace: str = NS) -> None:
    """A pod made by someone else (another tool, a person, an earlier platform process)."""
    kube.core().create_namespaced_pod(namespace, k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, labels=labels),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="c", image="busybox")]),
    ))


def stored_pods(kube: KubeAPI, namespace: str = NS) -> list[str]:
    return sorted(p.metadata.name for p in kube.core().list_namespaced_pod(namespace).items)


def test_it_is_the_backend_of_a_kubernetes_pool(kpool):
    assert isinstance(backend_for(kpool), KubernetesBackend)


def test_it_creates_a_labelled_pod_with_the_pools_settings_and_the_token_only_in_a_secret(kube, kpool):
    made = backend_for(kpool).create(kpool, "k-abc123", pool_token="pool-s3cret-token")
    assert (made.name, made.phase) == ("k-abc123", "pending")
    assert made.labels == {OURS: "iacplatform", "iac.platform/pool": str(kpool.id), "iac.platform/pod": "k-abc123"}

    pod = kube.core().read_namespaced_pod("k-abc123", NS)
    spec = pod.spec
    assert spec.restart_policy == "Never"
    assert spec.service_account_name == "iac-agent"
    # Terraform in the pod runs user code: no Kubernetes API token is mounted for it to read.
    assert spec.automount_service_account_token is False
    assert spec.node_selector == {"kubernetes.io/arch": "amd64"}
    (container,) = spec.containers
    assert container.image == "registry.example/iac-agent:1.4"
    assert container.command == ["python", "-m", "agents_app.agent", "--server", "http://iac-web.iac.svc:8000",
                                 "--name", "k-abc123", "--slots", "3"]
    assert container.resources.requests == {"cpu": "250m", "memory": "256Mi"}
    assert container.resources.limits == {"cpu": "2", "memory": "1Gi"}
    # The agent serves its health on the pod's IP (IAC_AGENT_HEALTH_*), probed for liveness.
    env = {e.name: e.value for e in container.env if e.value is not None}
    assert (env["IAC_AGENT_HEALTH_HOST"], env["IAC_AGENT_HEALTH_PORT"]) == ("0.0.0.0", "8081")
    assert (container.liveness_probe.http_get.path, container.liveness_probe.http_get.port) == ("/healthz/live", 8081)
    (token_env,) = [e for e in container.env if e.name == "IAC_POOL_TOKEN"]
    assert token_env.value is None
    assert (token_env.value_from.secret_key_ref.name, token_env.value_from.secret_key_ref.key) == (
        secret_name(kpool), "token")
    # Anyone who may read pods sees the spec: the token is not in it.
    assert "pool-s3cret-token" not in json.dumps(k8s.ApiClient().sanitize_for_serialization(pod))

    secret = kube.core().read_namespaced_secret(secret_name(kpool), NS)
    assert secret.metadata.labels[OURS] == "iacplatform"
    stored = (secret.string_data or {}).get("token") or base64.b64decode(secret.data["token"]).decode()
    assert stored == "pool-s3cret-token"


def test_a_pool_without_resources_selector_or_service_account_gets_none(kube):
    pool, _ = make_pool(backend="kubernetes", k8s_cpu_request="", k8s_memory_request="", k8s_memory_limit="")
    backend_for(pool).create(pool, "k-plain", pool_token="t")
    spec = kube.core().read_namespaced_pod("k-plain", NS).spec
    assert (spec.node_selector, spec.service_account_name) == (None, None)
    assert (spec.containers[0].resources.requests, spec.containers[0].resources.limits) == (None, None)


def test_it_keeps_the_secret_current_when_the_token_was_rotated(kube, kpool):
    backend = backend_for(kpool)
    backend.create(kpool, "k-one", pool_token="old-token")
    backend.create(kpool, "k-two", pool_token="new-token")
    secret = kube.core().read_namespaced_secret(secret_name(kpool), NS)
    assert (secret.string_data or {}).get("token") == "new-token"


def test_it_lists_only_its_own_pods_of_this_pool_and_maps_their_phases(kube, kpool):
    other, _ = make_pool(backend="kubernetes", k8s_namespace=NS)
    backend = backend_for(kpool)
    for name in ("k-a", "k-b", "k-c"):
        backend.create(kpool, name, pool_token="t")
    backend.create(other, "k-other", pool_token="t")
    raw_pod(kube, "someone-elses", {"app": "web"})
    raw_pod(kube, "other-tool", {OURS: "helm", "iac.platform/pool": str(kpool.id)})
    raw_pod(kube, "k-elsewhere", {OURS: "iacplatform", "iac.platform/pool": str(kpool.id)}, namespace="default")

    core = kube.core()
    core.patch_namespaced_pod_status("k-b", NS, {"status": {"phase": "Running"}})
    core.patch_namespaced_pod_status("k-c", NS, {"status": {"phase": "Failed"}})

    listed = {p.name: p.phase for p in backend.list(kpool)}
    assert listed == {"k-a": "pending", "k-b": "running", "k-c": "gone"}
    assert names(backend.list(other)) == ["k-other"]


def test_it_adopts_and_reports_strays_that_carry_our_labels(kube, kpool):
    # Made by an earlier platform process: the reconciler adopts known names and deletes
    # the others; both must be listed, with nothing else.
    labels = {OURS: "iacplatform", "iac.platform/pool": str(kpool.id)}
    raw_pod(kube, "k-known", {**labels, "iac.platform/pod": "k-known"})
    raw_pod(kube, "k-stray", {**labels, "iac.platform/pod": "k-stray"})
    raw_pod(kube, "unlabelled", {})
    backend = backend_for(kpool)
    assert names(backend.list(kpool)) == ["k-known", "k-stray"]

    backend.delete(kpool, "k-stray")
    assert names(backend.list(kpool)) == ["k-known"]
    assert stored_pods(kube) == ["k-known", "unlabelled"]


def test_it_never_deletes_a_pod_without_our_labels(kube, kpool):
    raw_pod(kube, "k-lookalike", {"app": "k-lookalike"})
    with pytest.raises(PodBackendError, match="k-lookalike .* lacks our labels.* left alone"):
        backend_for(kpool).delete(kpool, "k-lookalike")
    assert stored_pods(kube) == ["k-lookalike"]


def test_an_empty_namespace_lists_nothing(kube, kpool):
    assert backend_for(kpool).list(kpool) == []


def test_it_deletes_idempotently(kube, kpool):
    backend = backend_for(kpool)
    backend.create(kpool, "k-gone", pool_token="t")
    backend.delete(kpool, "k-gone")
    backend.delete(kpool, "k-gone")  # already gone: fine
    backend.delete(kpool, "k-never-was")
    assert backend.list(kpool) == []


def test_a_server_error_is_a_clear_backend_error(kube, kpool):
    backend = backend_for(kpool)
    backend.create(kpool, "k-1", pool_token="t")
    assert names(backend.list(kpool)) == ["k-1"]
    kube.react("get", f"/api/v1/namespaces/{NS}/pods", 500, times=1)  # the next list only
    with pytest.raises(PodBackendError, match=f"listing the pods of pool '{kpool.name}' in namespace {NS} failed: HTTP 500"):
        backend.list(kpool)
    assert names(backend.list(kpool)) == ["k-1"]


def test_a_name_clash_is_a_clear_backend_error(kube, kpool):
    kube.react("post", f"/api/v1/namespaces/{NS}/pods", 409, times=1)
    with pytest.raises(PodBackendError, match=f"a pod named k-clash already exists in namespace {NS}.*409"):
        backend_for(kpool).create(kpool, "k-clash", pool_token="t")
    backend_for(kpool).create(kpool, "k-next", pool_token="t")  # the API answers again: so does the backend


def test_a_deletion_refused_by_the_api_is_a_clear_backend_error(kube, kpool):
    backend = backend_for(kpool)
    backend.create(kpool, "k-stuck", pool_token="t")
    kube.react("delete", f"/api/v1/namespaces/{NS}/pods/k-stuck", 403)
    with pytest.raises(PodBackendError, match=f"deleting pod k-stuck in namespace {NS} failed: HTTP 403"):
        backend.delete(kpool, "k-stuck")


def test_a_hung_api_is_a_timeout_not_a_hang(kube, kpool):
    async def hang() -> None:
        await asyncio.sleep(3)

    kube.react("post", f"/api/v1/namespaces/{NS}/pods", hang)
    with pytest.raises(PodBackendError, match=r"creating pod k-slow .* did not answer within 0\.5 s"):
        backend_for(kpool).create(kpool, "k-slow", pool_token="t")


def test_an_unreachable_api_is_a_clear_backend_error(settings, kpool):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings.IAC_KUBERNETES_API_URL = f"http://127.0.0.1:{port}"
    with pytest.raises(PodBackendError, match=f"cannot reach the API at http://127.0.0.1:{port}"):
        backend_for(kpool).list(kpool)


def test_it_says_how_to_configure_the_client_when_nothing_is_configured(settings, kpool, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings.IAC_KUBERNETES_API_URL = ""
    settings.IAC_KUBECONFIG = str(tmp_path / "missing-kubeconfig")
    with pytest.raises(PodBackendError, match="no usable client configuration.*IAC_KUBERNETES_API_URL"):
        backend_for(kpool).list(kpool)


def test_it_uses_a_kubeconfig_when_no_api_url_is_set(kube, kpool, settings, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "emulator", "cluster": {"server": kube.url}}],
        "users": [{"name": "me", "user": {"token": "from-kubeconfig"}}],
        "contexts": [{"name": "test", "context": {"cluster": "emulator", "user": "me"}}],
    }))
    settings.IAC_KUBERNETES_API_URL = ""
    settings.IAC_KUBECONFIG = str(config)
    backend_for(kpool).create(kpool, "k-via-kubeconfig", pool_token="t")
    assert stored_pods(kube) == ["k-via-kubeconfig"]


def test_it_sends_the_configured_bearer_token(kube, kpool, settings):
    settings.IAC_KUBERNETES_TOKEN = "kube-token-123"
    seen: list[str] = []

    def record(request) -> None:
        seen.append(request.headers.get("Authorization", ""))

    backend_for(kpool).create(kpool, "k-1", pool_token="t")
    kube.react("get", f"/api/v1/namespaces/{NS}/pods", record)  # answers nothing: the emulator does
    assert names(backend_for(kpool).list(kpool)) == ["k-1"]
    assert seen == ["Bearer kube-token-123"]
