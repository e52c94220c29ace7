"""Pods, the reconciler, the autoscaler's tick and the bounds of every pool setting.

The backend in the reconciler tests is an in-memory stand-in for the world outside (processes,
a Kubernetes API): it implements the PodBackend interface and records what it was asked.
The local backend itself is tested with real processes at the end."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
from django.contrib.admin.sites import site
from django.test import RequestFactory
from django.utils import timezone

from agents_app.admin import AgentPoolAdmin
from agents_app.models import Agent, AgentPool, Pod, ScalingDecision
from agents_app.pods.backends import BackendPod, PodBackendError, backend_for, pod_labels
from agents_app.pods.local import LocalBackend, stop_all
from agents_app.protocol import PROTOCOL_VERSION, AgentStatus, PodPhase, Registration, SlotState
from agents_app.services import autoscaler
from agents_app.services.agents import agent_register
from agents_app.services.pods import pod_new_name
from iacplatform.errors import Conflict, Invalid
from tasks_app.dispatch.agent_reports import agent_join
from tasks_app.dispatch.models import DispatchEvent, Job, Slot
from tasks_app.services import sweep
from tasks_app.services.runs import run_create
from tests.agents_app.test_bounds import claim, plan
from tests.factories import DEMO_MAIN_TF, make_pool, make_workspace
from tests.live import wait_for

pytestmark = pytest.mark.django_db


class MemoryBackend:
    """Pods in a dict: what a backend would hold."""

    def __init__(self) -> None:
        self.pods: dict[str, BackendPod] = {}
        self.deleted: list[str] = []
        self.tokens: list[str] = []

    def create(self, pool, name, *, pool_token):
        self.tokens.append(pool_token)
        self.pods[name] = BackendPod(name=name, backend_id=f"id-{name}", phase="running", labels=pod_labels(pool, name))
        return self.pods[name]

    def delete(self, pool, name):
        self.deleted.append(name)
        self.pods.pop(name, None)

    def list(self, pool):
        return list(self.pods.values())


def register(pool, name):
    return agent_join(pool=pool, registration=Registration(name=name, slots=pool.slots_per_pod,
                                                            protocol_version=PROTOCOL_VERSION))


def test_pod_names_never_clash():
    pool, _ = make_pool(name="builders", backend="local")
    names = {pod_new_name(pool) for _ in range(2000)}
    assert len(names) == 2000 and all(n.startswith("builders-") and len(n) <= 63 for n in names)


def test_the_pool_token_is_kept_encrypted_for_the_pods():
    pool, token = make_pool(backend="local")
    pool.refresh_from_db()
    assert pool.plain_token() == token and token.encode() not in bytes(pool.token_encrypted)


def test_the_reconciler_adopts_known_pods_and_marks_vanished_ones_gone():
    pool, token = make_pool(backend="local")
    backend = MemoryBackend()
    name = autoscaler.pod_start(pool, backend, token=token, message="test")
    assert backend.tokens == [token]
    pod = Pod.objects.get(name=name)
    assert pod.phase == PodPhase.PENDING and pod.backend_id == f"id-{name}"
    register(pool, name)
    pod.refresh_from_db()
    assert pod.phase == PodPhase.RUNNING and pod.agent.name == name and pod.registered_at

    # A row whose backend id was never saved (a crash between create and save) is adopted.
    Pod.objects.filter(id=pod.id).update(backend_id="")
    done = autoscaler.reconcile(pool, backend)
    assert done["adopted"] == [name] and Pod.objects.get(id=pod.id).backend_id == f"id-{name}"

    # It vanishes: the row is gone, its agent offline, with events.
    backend.pods.clear()
    later = timezone.now() + timedelta(seconds=60)
    assert autoscaler.reconcile(pool, backend, now=later)["gone"] == [name]
    pod.refresh_from_db()
    assert pod.phase == PodPhase.GONE and pod.agent.status == AgentStatus.OFFLINE
    assert list(DispatchEvent.objects.filter(subject="pod", subject_id=pod.id).values_list("to_state", flat=True)) == [
        "pending", "running", "gone"]


def test_the_reconciler_deletes_strays_with_our_labels_and_never_foreign_pods():
    pool, _ = make_pool(backend="local")
    other, _ = make_pool(backend="local")
    backend = MemoryBackend()
    backend.pods["stray"] = BackendPod("stray", "1", "running", pod_labels(pool, "stray"))
    backend.pods["foreign"] = BackendPod("foreign", "2", "running", {"app": "someone-else"})
    backend.pods["other-pool"] = BackendPod("other-pool", "3", "running", pod_labels(other, "other-pool"))
    done = autoscaler.reconcile(pool, backend)
    assert done["strays_deleted"] == ["stray"]
    assert backend.deleted == ["stray"] and set(backend.pods) == {"foreign", "other-pool"}


def test_a_pod_that_never_registers_is_replaced():
    pool, token = make_pool(backend="local", pod_register_deadline_seconds=5, min_replicas=1)
    backend = MemoryBackend()
    name = autoscaler.pod_start(pool, backend, token=token, message="test")
    now = timezone.now() + timedelta(seconds=6)
    assert autoscaler.replace_unregistered(pool, backend, now=now) == [name]
    pod = Pod.objects.get(name=name)
    assert pod.phase == PodPhase.GONE and "did not register within 5s" in pod.message
    assert backend.deleted == [name]


def test_a_tick_scales_up_records_the_decision_and_never_removes_a_reserved_pod(monkeypatch):
    pool, _ = make_pool(backend="local", min_replicas=1, max_replicas=3, scale_down_delay_seconds=1, cooldown_seconds=0,
                        warmup_expire_seconds=60)
    backend = MemoryBackend()
    monkeypatch.setattr(autoscaler, "backend_for", lambda p: backend)
    decision = autoscaler.autoscale_pool(pool.id)
    assert decision.action == "up" and len(decision.pods_created) == 1 and "demand 0" in decision.reason
    first = decision.pods_created[0]
    register(pool, first)
    # Two more pods by hand (as if demand had been high), both registered.
    names = [autoscaler.pod_start(pool, backend, token=pool.plain_token(), message="t") for _ in range(2)]
    for n in names:
        register(pool, n)
    # The first pod holds a reservation (a real plan kept its dir); the other two are idle.
    agent = Agent.objects.get(name=first)
    task = run_create(workspace=make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF}),
                      operation="plan_and_apply", actor="test")
    sweep.sweep()
    assert plan(agent, claim(agent), keep=True) is True
    assert Slot.objects.get(agent=agent, state=SlotState.RESERVED).task_id == task.id
    Job.objects.filter(pool=pool).update(finished_at=timezone.now() - timedelta(seconds=10))
    later = timezone.now() + timedelta(seconds=5)
    AgentPool.objects.filter(id=pool.id).update(scale_down_wanted_since=timezone.now() - timedelta(seconds=10))
    decision = autoscaler.autoscale_pool(pool.id, now=later)
    assert decision.action == "down" and first not in decision.pods_deleted
    assert sorted(decision.pods_deleted) == sorted(names)
    assert Pod.objects.get(name=first).phase == PodPhase.RUNNING
    assert ScalingDecision.objects.filter(pool=pool).count() == 2
    # A removed pod's agent cannot come back.
    with pytest.raises(Conflict, match="being removed"):
        agent_register(pool=pool, registration=Registration(name=names[0], slots=3, protocol_version=PROTOCOL_VERSION))


def test_a_static_pool_is_not_managed():
    pool, _ = make_pool(backend="static")
    assert autoscaler.autoscale_pool(pool.id) is None
    backend = backend_for(pool)
    assert backend.list(pool) == []
    with pytest.raises(PodBackendError, match="self-hosted"):
        backend.create(pool, "x", pool_token="t")


# --- bounds: the API, the admin and registration say the same ------------------------------


def test_the_api_refuses_settings_out_of_bounds(api):
    for field, value in [("slots_per_pod", 214813330), ("max_replicas", 44997405), ("slots_per_pod", 17),
                         ("max_replicas", 101), ("warmup_max_retries", 0), ("pod_start_wait_seconds", 0)]:
        response = api.post("/api/v1/pools/", {"name": "big", field: value}, format="json")
        assert response.status_code == 400, (field, value)
        assert "must be between" in str(response.json()["errors"][field])
    assert not AgentPool.objects.filter(name="big").exists()


def test_the_api_refuses_a_warmup_expiry_not_longer_than_the_scale_down_delay(api):
    response = api.post("/api/v1/pools/", {"name": "short", "warmup_expire_seconds": 900,
                                           "scale_down_delay_seconds": 900}, format="json")
    assert response.status_code == 400
    assert "must be longer than the scale-down delay" in response.json()["errors"]["warmup_expire_seconds"][0]
    response = api.post("/api/v1/pools/", {"name": "ok", "warmup_expire_seconds": 901,
                                           "scale_down_delay_seconds": 900}, format="json")
    assert response.status_code == 201


def test_the_admin_form_checks_the_same_bounds(alice):
    request = RequestFactory().post("/admin/")
    request.user = alice
    form_class = AgentPoolAdmin(AgentPool, site).get_form(request)
    data = {"name": "adm", "backend": "local", "min_replicas": 1, "max_replicas": 10, "slots_per_pod": 214813330,
            "scale_up_delay_seconds": 30, "scale_down_delay_seconds": 900, "cooldown_seconds": 900,
            "warmup_expire_seconds": 1800, "warmup_max_retries": 3, "pod_start_wait_seconds": 60,
            "pod_register_deadline_seconds": 180, "plan_timeout_seconds": 1, "plan_kill_grace_seconds": 1,
            "apply_timeout_seconds": 1, "apply_kill_grace_seconds": 1, "no_agent_timeout_seconds": 1,
            "apply_pending_timeout_seconds": 0, "k8s_namespace": "iac-agents", "k8s_image": "iac-agent:latest",
            "drift_schedule": "", "drift_timezone": "UTC"}
    form = form_class(data=data)
    assert not form.is_valid() and "must be between 1 and 16" in str(form.errors["slots_per_pod"])
    form = form_class(data={**data, "slots_per_pod": 3, "warmup_expire_seconds": 600})
    assert not form.is_valid() and "longer than the scale-down delay" in str(form.errors["warmup_expire_seconds"])
    assert form_class(data={**data, "slots_per_pod": 3}).is_valid()


def test_registration_refuses_a_pool_slot_count_out_of_bounds():
    pool, _ = make_pool(backend="local")
    AgentPool.objects.filter(id=pool.id).update(slots_per_pod=214813330)  # a row edited by hand
    pool.refresh_from_db()
    with pytest.raises(Invalid, match="slots must be between 1 and 16"):
        agent_register(pool=pool, registration=Registration(name="a", protocol_version=PROTOCOL_VERSION))


def test_pods_and_decisions_in_the_api(api):
    pool, token = make_pool(backend="local")
    backend = MemoryBackend()
    name = autoscaler.pod_start(pool, backend, token=token, message="for the api")
    ScalingDecision.objects.create(pool=pool, action="up", pods_before=0, desired=1, demand=0, reason="why")
    pods = api.get(f"/api/v1/pools/{pool.id}/pods/").json()
    assert [p["name"] for p in pods] == [name] and pods[0]["phase"] == "pending"
    decisions = api.get(f"/api/v1/pools/{pool.id}/scaling-decisions/").json()
    assert decisions[0]["reason"] == "why"


# --- the local backend, with real processes -------------------------------------------------


def _cmdline_once_exec(pid: int, marker: bytes) -> bytes | None:
    cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
    return cmdline if marker in cmdline else None


def _gone(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] == "Z"  # a zombie: exited
    except FileNotFoundError:
        return True


def test_the_local_backend_starts_lists_and_stops_agent_processes(settings, tmp_path, monkeypatch):
    settings.VAR_DIR = tmp_path
    settings.IAC_AGENT_URL = "http://127.0.0.1:9"  # nobody listens: the agent keeps retrying
    settings.IAC_POD_STOP_GRACE_SECONDS = 5
    monkeypatch.setenv("IAC_AGENT_WORK_ROOT", str(tmp_path / "work"))
    try:
        pool, token = make_pool(backend="local")
        backend = LocalBackend()
        created = backend.create(pool, "lb-1", pool_token=token)
        pid = int(created.backend_id)
        # The token is in the environment, never on the command line (once it exec'd the agent).
        cmdline = wait_for(lambda: _cmdline_once_exec(pid, b"lb-1"), 10, "the agent's process to start")
        assert token.encode() not in cmdline and b"lb-1" in cmdline
        assert token.encode() in open(f"/proc/{pid}/environ", "rb").read()
        assert os.getsid(pid) == pid  # its own session: a worker restart does not take it down
        assert [(p.name, p.phase) for p in backend.list(pool)] == [("lb-1", "running")]
        other, _ = make_pool(backend="local")
        assert backend.list(other) == []
        backend.delete(pool, "lb-1")
        assert backend.list(pool) == []
        wait_for(lambda: _gone(pid), 10, "the deleted pod's process to exit")
        backend.delete(pool, "lb-1")  # idempotent
        backend.create(pool, "lb-2", pool_token=token)
        assert stop_all(tmp_path, grace=5) == ["lb-2"]
    finally:
        stop_all(tmp_path, grace=5)  # nothing left running when an assertion failed


def test_make_runs_demo_pool_from_before_pods_gets_its_token_kept_encrypted(settings, tmp_path):
    from io import StringIO

    from django.core.management import call_command

    settings.VAR_DIR = tmp_path
    pool, token = make_pool(name="local", backend="local")
    AgentPool.objects.filter(id=pool.id).update(token_encrypted=None)  # as stored before this issue
    (tmp_path / "local-pool-token").write_text(token)
    call_command("bootstrap_demo", stdout=StringIO())
    pool.refresh_from_db()
    assert pool.plain_token() == token  # the same token: its agents' credentials stay valid


def test_the_beat_tick_wants_no_pods_while_the_pool_is_frozen(monkeypatch):
    from agents_app.models import FreezeWindow

    pool, _ = make_pool(backend="local", min_replicas=2, max_replicas=3)
    now = timezone.now()
    FreezeWindow.objects.create(pool=pool, name="release freeze", kind="one_off", starts_at=now - timedelta(hours=1),
                                ends_at=now + timedelta(hours=1))
    backend = MemoryBackend()
    monkeypatch.setattr(autoscaler, "backend_for", lambda p: backend)
    for _ in range(100):  # a session-wide e2e worker may hold the autoscaler's lock for a moment
        if not autoscaler.autoscale(now=now).get("skipped"):
            break
        time.sleep(0.05)
    decision = ScalingDecision.objects.filter(pool=pool).latest("id")
    assert decision.desired == 0 and backend.pods == {}, decision.reason
    assert "frozen" in decision.reason
