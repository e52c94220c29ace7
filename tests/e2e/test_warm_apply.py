"""Warm apply, end to end: the paths an apply can take after Confirm, and its invariants."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from iacplatform import crypto
from tasks_app.dispatch.models import Job
from tasks_app.models import Plan, Task
from tasks_app.selectors import run_log_read
from tests.live import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def apply_log(run_id: int) -> str:
    return run_log_read(task_id=run_id, job_kind="apply")[0]


def plan_file(agent, workspace_id: int, run_id: int):
    return agent.work_root / str(workspace_id) / str(run_id) / "plan.out"


def test_it_applies_in_the_plans_own_dir_without_init(scenario):
    s = scenario()
    a1 = s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    pending = s.user.wait(run["id"], "apply_pending")
    assert pending["warmup_status"] == "ready"
    assert pending["warmup_agent"] == a1.name
    assert plan_file(a1, s.workspace["id"], run["id"]).exists()

    s.user.confirm(run["id"])
    done = s.user.wait(run["id"], "applied")

    assert done["apply_path"] == "fast"
    assert "Initializing" not in apply_log(run["id"])
    assert "Apply complete!" in apply_log(run["id"])
    assert done["confirm_to_apply_start_ms"] is not None and done["confirm_to_first_log_ms"] is not None
    assert s.applies() == 1


def test_it_rewarms_on_another_agent_when_the_plans_agent_is_killed(scenario):
    s = scenario()
    a1 = s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    s.user.wait(run["id"], "apply_pending", warmup="ready")
    a2 = s.agent("a2")
    a1.kill()

    wait_for(lambda: s.user.run(run["id"])["warmup_agent"] == a2.name, 60, "the run to be warm on a2")
    ready = s.user.wait(run["id"], "apply_pending", warmup="ready", timeout=60)
    assert ready["warmup_agent"] == a2.name
    s.user.confirm(run["id"])
    done = s.user.wait(run["id"], "applied")

    assert done["apply_path"] == "rewarmed"
    assert "Initializing" not in apply_log(run["id"])
    assert s.applies() == 1


def test_it_restores_a_corrupt_local_plan_file_from_the_database(scenario):
    s = scenario()
    a1 = s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    s.user.wait(run["id"], "apply_pending", warmup="ready")
    plan_file(a1, s.workspace["id"], run["id"]).write_bytes(b"not the reviewed plan")

    s.user.confirm(run["id"])
    done = s.user.wait(run["id"], "applied")

    assert done["apply_path"] == "fast"
    assert "restored from the database" in done["apply_path_reason"]
    assert "does not match plan_hash" in apply_log(run["id"])
    assert s.applies() == 1


def test_it_never_applies_plan_bytes_that_do_not_match_the_reviewed_hash(scenario):
    s = scenario()
    a1 = s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    s.user.wait(run["id"], "apply_pending", warmup="ready")
    plan_file(a1, s.workspace["id"], run["id"]).write_bytes(b"tampered on disk")
    Plan.objects.filter(task_id=run["id"]).update(encrypted_data=crypto.encrypt(b"tampered in the database"))

    s.user.confirm(run["id"])
    failed = s.user.wait(run["id"], "errored")

    assert "plan file corrupted" in failed["message"]
    assert "nothing was applied" in failed["message"]
    assert s.applies() == 0
    assert failed["apply_started_at"] is None


def test_it_gives_up_warming_after_three_failures_and_confirm_still_applies_cold(scenario):
    s = scenario()
    a1 = s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    s.user.wait(run["id"], "apply_pending", warmup="ready")
    plan = Plan.objects.get(task_id=run["id"])
    good = plan.encrypted_data
    # Every warmup restores plan.out from the database and verifies it: make that fail.
    Plan.objects.filter(id=plan.id).update(encrypted_data=crypto.encrypt(b"broken copy"))
    a1.kill()
    s.agent("a2")

    wait_for(lambda: s.user.run(run["id"])["warmup_status"] == "failed", 60, "three failed warmups")
    failed = s.user.run(run["id"])
    assert failed["warmup_retry_count"] == 3
    assert Job.objects.filter(task_id=run["id"], kind="warmup", status="failed").count() == 3

    Plan.objects.filter(id=plan.id).update(encrypted_data=good)
    s.user.confirm(run["id"])
    done = s.user.wait(run["id"], "applied")
    assert done["apply_path"] == "cold"
    assert "warmup failed 3 times" in done["apply_path_reason"]
    assert "Initializing" in apply_log(run["id"])
    assert s.applies() == 1


def test_it_rewarms_an_expired_warm_dir(scenario):
    s = scenario()
    s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    s.user.wait(run["id"], "apply_pending", warmup="ready")
    Task.objects.filter(id=run["id"]).update(warmup_expires_at=timezone.now() - timedelta(seconds=1))

    wait_for(lambda: Job.objects.filter(task_id=run["id"], kind="warmup", status="succeeded").exists(), 30,
             "the expired warm dir to be warmed up again")
    ready = s.user.wait(run["id"], "apply_pending", warmup="ready")
    assert "warmed up" in ready["warmup_message"]
    s.user.confirm(run["id"])
    done = s.user.wait(run["id"], "applied")
    assert done["apply_path"] == "rewarmed"
    assert s.applies() == 1


def test_it_applies_once_for_two_concurrent_confirms(scenario):
    s = scenario()
    s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    s.user.wait(run["id"], "apply_pending", warmup="ready")

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = sorted(r.status_code for r in pool.map(lambda _: s.user.confirm(run["id"]), range(4)))

    assert codes == [200, 409, 409, 409]
    s.user.wait(run["id"], "applied")
    assert Job.objects.filter(task_id=run["id"], kind="apply").count() == 1
    assert s.applies() == 1


def test_it_discards_a_stale_plan_when_the_state_changed_after_it(scenario, live_url, alice):
    s = scenario()
    s.agent("a1")
    first = s.user.queue(s.workspace["id"])
    s.user.wait(first["id"], "apply_pending")
    s.user.confirm(first["id"])
    s.user.wait(first["id"], "applied")

    s.user.request("POST", f"/api/v1/workspaces/{s.workspace['id']}/variables/",
                   json={"key": "greeting", "value": "changed", "category": "terraform"}, expect=201)
    second = s.user.queue(s.workspace["id"])
    s.user.wait(second["id"], "apply_pending")
    # Someone changes the state behind the platform's back, e.g. with their own terraform CLI.
    state_url = f"{live_url}/api/v1/workspaces/{s.workspace['id']}/state"
    auth = ("alice", s.user.s.headers["Authorization"].split()[1])
    state = requests.get(state_url, auth=auth, timeout=10).json()
    state["serial"] += 1
    assert requests.post(state_url, data=json.dumps(state), auth=auth, timeout=10).status_code == 201

    resp = s.user.confirm(second["id"])
    assert resp.status_code == 409
    assert "stale plan" in resp.json()["detail"]
    run = s.user.run(second["id"])
    assert run["status"] == "discarded" and "state changed after the plan" in run["message"]
    assert s.applies() == 1


def test_it_takes_the_cold_path_on_another_agent_when_the_target_does_not_claim(scenario):
    s = scenario()
    a1 = s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    s.user.wait(run["id"], "apply_pending", warmup="ready")
    s.agent("a2")
    os.killpg(a1.proc.pid, signal.SIGSTOP)  # alive to the OS, deaf to the server
    try:
        s.user.confirm(run["id"])
        done = s.user.wait(run["id"], "applied", timeout=60)
    finally:
        os.killpg(a1.proc.pid, signal.SIGCONT)
    assert done["apply_path"] == "cold"
    # The apply was pushed to the frozen a1, whose open long-poll took it but which never
    # acknowledged it. Late is not lost: the server cannot tell whether terraform runs, so
    # it waits until a1 is declared offline; the apply had not started, and a2 takes it, cold.
    assert f"{a1.name} went offline" in done["apply_path_reason"]
    assert "the apply had not started" in done["apply_path_reason"]
    assert s.applies() == 1


def test_it_takes_the_cold_path_when_warm_apply_is_off(scenario):
    s = scenario(warm_apply=False)
    s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    pending = s.user.wait(run["id"], "apply_pending")
    assert pending["warmup_status"] == "none" and pending["warmup_agent"] is None
    assert not Job.objects.filter(task_id=run["id"], kind="warmup").exists()
    s.user.confirm(run["id"])
    done = s.user.wait(run["id"], "applied")
    assert done["apply_path"] == "cold"
    assert "Initializing" in apply_log(run["id"])
    assert s.applies() == 1
