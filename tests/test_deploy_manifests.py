"""deploy/kubernetes: every manifest is loaded into the official client's model classes, which
refuse unknown fields (a typo such as `imagePullPolicyy`, a field at the wrong level) and
missing required ones, then created against the Kubernetes API emulator. The emulator itself
validates nothing it stores: the model classes are the check.

The RBAC is checked against what the kubernetes pod backend really asks of the API: the
requests it sends during create, list and delete (recorded by the emulator) must all be
allowed by the Role, and the Role must allow nothing else."""

from __future__ import annotations

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
            "secret.example.yaml", "migrate.yaml"} <= {p.name for p in MANIFESTS}
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
