"""deploy/kubernetes: every manifest is loaded into the official client's model classes, which
refuse unknown fields (a typo such as `imagePullPolicyy`, a field at the wrong level) and
missing required ones, then created against the Kubernetes API emulator. The emulator itself
validates nothing it stores: the model classes are the check.

The RBAC is checked against what the kubernetes pod backend really asks of the API: the
requests it sends during create, list and delete (recorded by the emulator) must all be
allowed by the Role, and the Role must allow nothing else.

Agent pods run user code: the NetworkPolicy of their namespace must keep them from the
cluster's internal addresses (Redis, PostgreSQL, the API server, other pods) except web's pods
and DNS, and let them reach the internet; Redis must ask for a password."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import utils as k8s_utils

from tests.kube import kube_api

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))


def documents() -> list[tuple[str, dict]]:
    docs = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((f"{path.name}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}", doc))
    return docs


def model_class(doc: dict) -> type:
    version = doc["apiVersion"].rsplit("/", 1)[-1]
    return getattr(k8s, f"{version.capitalize()}{doc['kind']}")


def by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == kind}


def test_there_are_manifests_for_web_worker_beat_and_the_rbac():
    assert {"namespace.yaml", "rbac.yaml", "web.yaml", "worker.yaml", "beat.yaml", "config.yaml",
            "secret.example.yaml", "migrate.yaml", "agent-network-policy.yaml"} <= {p.name for p in MANIFESTS}
    assert set(by_kind("Deployment")) == {"iac-web", "iac-worker", "iac-beat"}
    assert by_kind("Deployment")["iac-beat"]["spec"]["replicas"] == 1


@pytest.mark.parametrize("name,doc", documents(), ids=[name for name, _ in documents()])
def test_each_manifest_is_a_valid_object_of_the_official_model(name, doc):
    model = model_class(doc).model_validate(doc)  # extra="forbid": unknown fields fail here
    # Nothing was dropped on the way: the model serializes back to exactly the manifest.
    assert k8s.ApiClient().sanitize_for_serialization(model) == doc


@pytest.mark.parametrize(
    "change,words",
    [
        (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicyy="Always"),
         "Extra inputs are not permitted"),
        (lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"), "Field required"),
        (lambda d: d["spec"].pop("selector"), "Field required"),
    ],
)
def test_the_check_catches_a_typo_and_a_missing_field(change, words):
    doc = next(yaml.safe_load_all((ROOT / "deploy/kubernetes/web.yaml").read_text()))
    change(doc)
    with pytest.raises(ValueError, match=words):
        k8s.V1Deployment.model_validate(doc)


def test_the_platform_gets_its_secrets_from_a_secret_and_probes_the_health_endpoints():
    secret = by_kind("Secret")["iac-platform"]
    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "IAC_ENCRYPTION_KEYS"} <= set(secret["stringData"])
    for deployment in by_kind("Deployment").values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert {"secretRef": {"name": "iac-platform"}} in container["envFrom"]
        assert "env" not in container  # no secret value inline
    (web,) = by_kind("Deployment")["iac-web"]["spec"]["template"]["spec"]["containers"]
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz/live"
    assert web["readinessProbe"]["httpGet"]["path"] == "/healthz/ready"
    assert "daphne" in web["command"]


def test_the_platform_reaches_redis_with_a_password():
    redis_url = urlsplit(by_kind("Secret")["iac-platform"]["stringData"]["REDIS_URL"])
    assert redis_url.scheme in ("redis", "rediss") and redis_url.hostname
    assert redis_url.password, "REDIS_URL names no password: anything in the cluster could read or publish"
    assert "REDIS_URL" not in by_kind("ConfigMap")["iac-platform"]["data"]


# Addresses inside a cluster (Services, pods, the API server, the cloud's metadata endpoint)
# and on the internet (cloud APIs, registries).
INTERNAL = ["10.96.0.1", "10.96.0.10", "10.244.1.7", "10.42.0.5", "10.100.0.1", "172.20.0.1", "172.17.0.2",
            "192.168.3.4", "100.64.0.9", "169.254.169.254", "fd00::1", "fd12:3456::10", "fe80::1"]
INTERNET = ["8.8.8.8", "52.94.236.248", "142.250.74.46", "20.190.160.1", "151.101.1.69", "2606:4700::1111",
            "2a00:1450:4001:80b::200e"]
PRIVATE_RANGES = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "fc00::/7",
                  "fe80::/10"]


def _ip_allowed(egress: list[dict], address: str) -> bool:
    """Whether an egress rule lets a pod open a connection to `address` by its IP (ipBlock)."""
    ip = ipaddress.ip_address(address)
    for rule in egress:
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            if block is None:
                continue
            cidr = ipaddress.ip_network(block["cidr"])
            if ip.version == cidr.version and ip in cidr and not any(
                    ip in ipaddress.ip_network(e) for e in block.get("except", [])):
                return True
    return False


def test_agent_pods_reach_web_dns_and_the_internet_and_nothing_inside_the_cluster():
    from agents_app.pods.backends import MANAGED_BY_LABEL, MANAGED_BY_VALUE

    policy = by_kind("NetworkPolicy")["iac-agents"]
    spec = policy["spec"]
    # It applies to the pods the pod backend makes, in the agents' namespace.
    assert policy["metadata"]["namespace"] == by_kind("Role")["iac-pod-backend"]["metadata"]["namespace"]
    assert spec["podSelector"] == {"matchLabels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}}
    # Egress is listed explicitly (else the policy restricts ingress only); nothing comes in.
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"} and not spec.get("ingress")
    egress = spec["egress"]
    assert all(rule.get("to") for rule in egress), "a rule without `to` allows every destination"

    # By address: nothing internal, the internet yes.
    for address in INTERNAL:
        assert not _ip_allowed(egress, address), f"agent pods may connect to {address}"
    for address in INTERNET:
        assert _ip_allowed(egress, address), f"agent pods cannot reach {address} on the internet"
    for rule in egress:
        for peer in rule["to"]:
            if "ipBlock" not in peer:
                continue
            cidr = ipaddress.ip_network(peer["ipBlock"]["cidr"])
            excepted = [ipaddress.ip_network(e) for e in peer["ipBlock"].get("except", [])]
            assert all(e.subnet_of(cidr) for e in excepted), "the API refuses an `except` outside its cidr"
            for private in map(ipaddress.ip_network, PRIVATE_RANGES):
                if private.version == cidr.version:
                    assert any(private.subnet_of(e) for e in excepted), f"{private} is open to agent pods"

    # By selector: web's pods on their port, and the cluster DNS; no other pod.
    web = by_kind("Deployment")["iac-web"]
    web_port = web["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    selected = []
    for rule in egress:
        for peer in rule["to"]:
            if "ipBlock" in peer:
                assert set(peer) == {"ipBlock"}
                continue
            # A podSelector alone would mean pods of the agents' own namespace.
            assert set(peer) == {"namespaceSelector", "podSelector"}, peer
            namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            ports = sorted((p["protocol"], p["port"]) for p in rule["ports"])
            selected.append((namespace, peer["podSelector"]["matchLabels"], ports))
    web_labels = web["spec"]["template"]["metadata"]["labels"]
    assert len(selected) == 2, selected
    (web_ns, web_selector, web_ports), (dns_ns, dns_selector, dns_ports) = sorted(
        selected, key=lambda s: s[0] != web["metadata"]["namespace"])
    assert web_ns == web["metadata"]["namespace"] and web_selector.items() <= web_labels.items()
    assert web_ports == [("TCP", web_port)]
    assert dns_ns == "kube-system" and dns_selector == {"k8s-app": "kube-dns"}
    assert dns_ports == [("TCP", 53), ("UDP", 53)]
    # web's address as the agents use it is that Service, on that port.
    service = by_kind("Service")["iac-web"]
    assert service["spec"]["ports"][0]["targetPort"] in ("http", web_port)


def test_what_the_manifests_refer_to_exists_in_them():
    """A misspelt reference is valid YAML and a valid model, and a pod that never starts."""
    config = by_kind("ConfigMap")["iac-platform"]["data"]
    service = by_kind("Service")["iac-web"]
    agent_url = urlsplit(config["IAC_AGENT_URL"])
    assert agent_url.hostname.split(".")[:2] == [service["metadata"]["name"], service["metadata"]["namespace"]]
    assert agent_url.port == service["spec"]["ports"][0]["port"]
    web = by_kind("Deployment")["iac-web"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= web["metadata"]["labels"].items()

    accounts = {(d["metadata"]["namespace"], n) for n, d in by_kind("ServiceAccount").items()}
    for name, doc in [*by_kind("Deployment").items(), *by_kind("Job").items()]:
        spec = doc["spec"]["template"]["spec"]
        namespace = doc["metadata"]["namespace"]
        assert (namespace, spec["serviceAccountName"]) in accounts, name
        assert doc["spec"].get("selector", {}).get("matchLabels", {}).items() <= doc["spec"]["template"]["metadata"][
            "labels"].items(), name
        for container in spec["containers"]:
            refs = {(k, v["name"]) for source in container["envFrom"] for k, v in source.items()}
            assert refs == {("configMapRef", "iac-platform"), ("secretRef", "iac-platform")}, name
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in spec.get("volumes", [])}, name


def test_every_manifest_is_created_against_the_api():
    with kube_api() as kube:
        api = k8s.ApiClient(kube.core().api_client.configuration)
        for _name, doc in documents():
            # kmock 0.8 cannot parse POST /api/v1/namespaces (its path parser wants a name
            # after `namespaces`); namespaces are implicit in it. The Namespace manifests are
            # still checked by the model test above.
            if doc["kind"] != "Namespace":
                k8s_utils.create_from_dict(api, doc)
        core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
        rbac, batch = k8s.RbacAuthorizationV1Api(api), k8s.BatchV1Api(api)
        assert {d.metadata.name for d in apps.list_namespaced_deployment("iac").items} == {
            "iac-web", "iac-worker", "iac-beat"}
        assert [s.metadata.name for s in core.list_namespaced_service("iac").items] == ["iac-web"]
        assert [r.metadata.name for r in rbac.list_namespaced_role("iac-agents").items] == ["iac-pod-backend"]
        assert [b.metadata.name for b in rbac.list_namespaced_role_binding("iac-agents").items] == ["iac-pod-backend"]
        assert [j.metadata.name for j in batch.list_namespaced_job("iac").items] == ["iac-migrate"]
        networking = k8s.NetworkingV1Api(api)
        assert [p.metadata.name for p in networking.list_namespaced_network_policy("iac-agents").items] == [
            "iac-agents"]


@pytest.mark.django_db
def test_the_role_allows_exactly_what_the_pod_backend_asks_for(settings):
    from agents_app.pods.backends import backend_for
    from tests.factories import make_pool

    role = by_kind("Role")["iac-pod-backend"]
    allowed = {(resource, verb) for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]}
    binding = by_kind("RoleBinding")["iac-pod-backend"]
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"] == "iac-agents"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "iac-platform", "namespace": "iac"}]
    for deployment in ("iac-web", "iac-worker"):
        assert by_kind("Deployment")[deployment]["spec"]["template"]["spec"]["serviceAccountName"] == "iac-platform"

    pool, _ = make_pool(backend="kubernetes", k8s_namespace="iac-agents")
    with kube_api() as kube:
        settings.IAC_KUBERNETES_API_URL = kube.url
        backend = backend_for(pool)
        backend.create(pool, "k-1", pool_token="t1")
        backend.create(pool, "k-2", pool_token="t2")  # the Secret exists: patched
        backend.list(pool)
        backend.delete(pool, "k-1")
        backend.delete(pool, "k-1")  # already gone
        asked = {(request.resource.plural, VERBS[request.action.name]) for request in kube.emulator}
    assert asked <= allowed, f"the Role lacks {asked - allowed}"
    assert allowed == asked, f"the Role grants what the backend never uses: {allowed - asked}"


VERBS = {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create", "UPDATE": "patch",
         "DELETE": "delete"}
