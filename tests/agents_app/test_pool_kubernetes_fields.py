"""A pool's Kubernetes fields (namespace, image, resources, service account, node selector):
checked when saved, in the API and the admin alike, so a pool never holds a value the API
server would refuse when the reconciler creates a pod hours later."""

from __future__ import annotations

import json

import pytest
from django.contrib import admin
from django.forms.models import model_to_dict

from agents_app.models import AgentPool

pytestmark = pytest.mark.django_db


def test_it_gives_a_new_pool_working_kubernetes_defaults(api):
    created = api.post("/api/v1/pools/", {"name": "kube", "backend": "kubernetes"}, format="json").json()
    assert {k: v for k, v in created.items() if k.startswith("k8s_")} == {
        "k8s_namespace": "iac-agents", "k8s_image": "iac-agent:latest",
        "k8s_cpu_request": "500m", "k8s_cpu_limit": "", "k8s_memory_request": "512Mi", "k8s_memory_limit": "2Gi",
        "k8s_service_account": "", "k8s_node_selector": {},
    }


def test_it_saves_valid_kubernetes_settings(api, pool):
    fields = {
        "k8s_namespace": "team-a-agents", "k8s_image": "registry.example:5000/iac/agent@sha256:" + "a" * 64,
        "k8s_cpu_request": "1", "k8s_cpu_limit": "1500m", "k8s_memory_request": "1Gi", "k8s_memory_limit": "1.5Gi",
        "k8s_service_account": "iac.agent-sa", "k8s_node_selector": {"kubernetes.io/arch": "amd64", "disk": ""},
    }
    response = api.patch(f"/api/v1/pools/{pool.id}/", fields, format="json")
    assert response.status_code == 200, response.json()
    pool.refresh_from_db()
    assert {k: getattr(pool, k) for k in fields} == fields


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("k8s_namespace", "Team_A", "DNS-1123 label"),
        ("k8s_namespace", "a" * 64, "at most 63"),
        ("k8s_namespace", "", "may not be blank"),
        ("k8s_image", "my image", "without spaces"),
        ("k8s_cpu_request", "lots", "not a Kubernetes quantity"),
        ("k8s_memory_limit", "2GB!", "not a Kubernetes quantity"),
        ("k8s_cpu_limit", "0", "greater than zero"),
        ("k8s_service_account", "-sa", "DNS-1123 subdomain"),
        ("k8s_node_selector", ["amd64"], "JSON object"),
        ("k8s_node_selector", {"arch": 64}, "must be a string"),
        ("k8s_node_selector", {"bad key!": "x"}, "not a valid label name"),
        ("k8s_node_selector", {"arch": "-amd64"}, "not a valid label value"),
    ],
)
def test_it_refuses_what_kubernetes_would_refuse_naming_the_field(api, pool, field, value, words):
    before = model_to_dict(AgentPool.objects.get(id=pool.id))
    response = api.patch(f"/api/v1/pools/{pool.id}/", {field: value}, format="json")
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert words in " ".join(errors[field]), errors
    assert model_to_dict(AgentPool.objects.get(id=pool.id)) == before  # nothing changed


def test_it_refuses_a_request_above_its_limit(api, pool):
    response = api.patch(f"/api/v1/pools/{pool.id}/", {"k8s_memory_request": "4Gi"}, format="json")  # limit 2Gi
    assert response.status_code == 400
    assert response.json()["errors"]["k8s_memory_request"] == [
        "the memory request (4Gi) must not exceed the memory limit (2Gi)"]

    response = api.post("/api/v1/pools/", {"name": "cpu", "k8s_cpu_request": "2", "k8s_cpu_limit": "500m"},
                        format="json")
    assert response.status_code == 400 and "k8s_cpu_request" in response.json()["errors"]
    assert not AgentPool.objects.filter(name="cpu").exists()


def test_the_admin_form_checks_the_same_rules(rf, alice, pool):
    model_admin = admin.site._registry[AgentPool]
    request = rf.get("/")
    request.user = alice
    form_class = model_admin.get_form(request, pool, change=True)

    def form(**changes):
        stored = AgentPool.objects.get(id=pool.id)  # a form's validation edits its instance
        data = {**model_to_dict(stored), "teams": [], **changes}
        data["k8s_node_selector"] = json.dumps(data["k8s_node_selector"])
        return form_class(data=data, instance=stored)

    assert form(k8s_namespace="agents-b", k8s_node_selector={"disk": "ssd"}).is_valid()
    bad = form(k8s_namespace="Agents B", k8s_cpu_request="fast", k8s_node_selector={"disk": 1})
    assert not bad.is_valid()
    assert set(bad.errors) >= {"k8s_namespace", "k8s_cpu_request", "k8s_node_selector"}
    # An emptied node selector box means no selector, not a refusal (nor a NULL in the row).
    empty = form(k8s_node_selector={})
    empty.data["k8s_node_selector"] = ""
    assert empty.is_valid(), empty.errors
    assert empty.save().k8s_node_selector == {}
    over = form(k8s_memory_request="3Gi", k8s_memory_limit="1Gi")
    assert not over.is_valid()
    assert over.errors["k8s_memory_request"] == ["the memory request (3Gi) must not exceed the memory limit (1Gi)"]
