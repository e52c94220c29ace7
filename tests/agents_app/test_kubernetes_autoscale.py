"""The autoscaler and its reconciler driving the `kubernetes` backend, through the real
`kubernetes` client against kmock's emulator: pods come up for a pool, and a failing API
(500, a 409 name clash, a timeout) is recorded as a clear error with no Pod row lost or
duplicated; a pod whose create answer was lost is found and cleaned up at the next tick."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from django.utils import timezone

from agents_app.models import Pod, ScalingDecision
from agents_app.protocol import PodPhase
from agents_app.services.autoscaler import autoscale_pool
from tests.factories import make_pool
from tests.kube import kube_api

pytestmark = pytest.mark.django_db

NS = "iac-agents"
PODS = f"/api/v1/namespaces/{NS}/pods"


@pytest.fixture
def kube(settings):
    with kube_api() as api:
        settings.IAC_KUBERNETES_API_URL = api.url
        settings.IAC_KUBERNETES_TIMEOUT_SECONDS = 0.5
        yield api


@pytest.fixture
def kpool():
    pool, _ = make_pool(backend="kubernetes", k8s_namespace=NS, min_replicas=2, max_replicas=4)
    return pool


def live_rows(pool) -> list[str]:
    return sorted(Pod.objects.filter(pool=pool, phase__in=[PodPhase.PENDING, PodPhase.RUNNING])
                  .values_list("name", flat=True))


def in_cluster(kube) -> list[str]:
    return sorted(p.metadata.name for p in kube.core().list_namespaced_pod(NS).items)


def later(seconds: float = 60):
    return timezone.now() + timedelta(seconds=seconds)


def test_the_autoscaler_brings_a_kubernetes_pool_to_its_minimum_once(kube, kpool):
    decision = autoscale_pool(kpool.id)
    assert decision.action == "up", decision.reason
    assert live_rows(kpool) == in_cluster(kube) and len(in_cluster(kube)) == 2
    assert all(Pod.objects.get(name=n).backend_id for n in in_cluster(kube))

    autoscale_pool(kpool.id, now=later())  # nothing to do: no duplicate
    assert live_rows(kpool) == in_cluster(kube) and len(in_cluster(kube)) == 2


@pytest.mark.parametrize("failure,words", [(500, "HTTP 500"), (409, "already exists"), ("hang", "did not answer")])
def test_a_failing_create_is_a_clear_error_and_the_next_tick_loses_and_duplicates_nothing(kube, kpool, failure, words):
    async def hang() -> None:
        await asyncio.sleep(2)

    # The API fails the first create, after recording the pod (as a real API server may,
    # when its answer is what got lost): the platform cannot know whether it exists.
    kube.react("post", PODS, hang if failure == "hang" else failure, times=1)
    decision = autoscale_pool(kpool.id)
    assert decision.action == "error"
    assert "creating a pod failed: kubernetes: " in decision.reason and words in decision.reason
    (failed,) = Pod.objects.filter(pool=kpool, phase=PodPhase.GONE)
    assert "the backend could not create it" in failed.message
    assert failed.name in in_cluster(kube)  # the orphan

    decision = autoscale_pool(kpool.id, now=later())
    assert failed.name not in in_cluster(kube), decision.reason  # a stray with our labels: deleted
    assert f"strays deleted: {failed.name}" in decision.reason
    assert live_rows(kpool) == in_cluster(kube) and len(in_cluster(kube)) == 2
    assert Pod.objects.filter(pool=kpool).count() == 3  # the failed one stays, gone, with its reason
    assert ScalingDecision.objects.filter(pool=kpool).count() == 2


def test_a_failing_list_stops_the_tick_with_a_clear_reason(kube, kpool):
    autoscale_pool(kpool.id)
    before = live_rows(kpool)
    kube.react("get", PODS, 500, times=1)
    decision = autoscale_pool(kpool.id, now=later())
    assert decision.action == "error" and "the backend's list failed: kubernetes: listing the pods" in decision.reason
    assert live_rows(kpool) == before == in_cluster(kube)  # nothing marked gone on a failed list
