"""The dispatch core end to end: real agents, real terraform. Restarts keep the fast path,
Confirm during a warmup waits for it, two pushes to one agent are both delivered, a full
pool never stalls, and plans go only to agents with their terraform version."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from django.conf import settings

from agents_app.agent.terraform import resolve_terraform
from tasks_app.dispatch.models import Job
from tasks_app.selectors import run_log_read
from tests.factories import DEMO_MAIN_TF
from tests.live import LOG_DIR, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def apply_log(run_id: int) -> str:
    return run_log_read(task_id=run_id, job_kind="apply")[0]


def real_terraform() -> str:
    return resolve_terraform(settings.VAR_DIR)


def terraform_version(binary: str) -> str:
    out = subprocess.run([binary, "version", "-json"], capture_output=True, check=True, timeout=60).stdout
    return json.loads(out)["terraform_version"]


def wrapper(tmp_path: Path, name: str, body: str) -> str:
    """A terraform executable that does something first, then runs the real one."""
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\nexec {real_terraform()} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def agent_log(name: str) -> str:
    path = LOG_DIR / f"agent-{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_it_keeps_the_fast_path_across_an_agent_restart(scenario):
    s = scenario()
    a1 = s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    s.user.wait(run["id"], "apply_pending", warmup="ready")

    a1.kill()  # SIGKILL: no goodbye; the server still thinks a1 is online
    resumes = agent_log(a1.name).count("resumed with")
    s.start_agent(s.token, a1.name, wait=False)
    wait_for(lambda: agent_log(a1.name).count("resumed with 1 warm dir") > resumes, 30, "a1 to come back")
    started = time.monotonic()
    assert s.user.confirm(run["id"]).status_code == 200
    assert time.monotonic() - started < 5
    done = s.user.wait(run["id"], "applied")

    assert done["apply_path"] == "fast", done["apply_path_reason"]
    assert "Initializing" not in apply_log(run["id"])
    assert s.applies() == 1


def test_it_applies_on_the_warmup_in_progress(scenario, tmp_path):
    s = scenario()
    a1 = s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    s.user.wait(run["id"], "apply_pending", warmup="ready")
    # a2's `terraform init` lasts, like a provider download, until the test has confirmed
    # during it (at most a minute): no fixed sleep to outlast on a loaded machine.
    gate = tmp_path / "init-may-finish"
    s.agent("a2", env={"IAC_TERRAFORM_BIN": wrapper(tmp_path, "slow-init", (
        'if [ "$1" = init ]; then\n'
        f'  i=0; while [ ! -e {gate} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n'
        "fi"))})
    a1.kill()

    s.user.wait(run["id"], "apply_pending", warmup="warming", timeout=60)
    assert s.user.confirm(run["id"]).status_code == 200
    waiting = s.user.run(run["id"])
    assert waiting["status"] == "apply_queued"
    assert waiting["waiting_reason"].startswith(f"queued: waiting for the warmup on {s.agents['a2'].name} to finish")
    gate.touch()
    done = s.user.wait(run["id"], "applied", timeout=60)

    assert done["apply_path"] == "rewarmed", done["apply_path_reason"]
    assert "Confirm came during the warmup" in done["apply_path_reason"]
    assert "Initializing" not in apply_log(run["id"])
    assert Job.objects.get(task_id=run["id"], kind="apply").agent.name == s.agents["a2"].name
    assert s.applies() == 1


def test_it_applies_two_runs_confirmed_a_moment_apart_on_one_agent_both_fast(scenario, tmp_path):
    s = scenario()
    s.agent("a1")
    other_marker = tmp_path / "other-applied.txt"
    other = s.user.create_workspace(f"{s.workspace['name']}-b", s.pool.id, {"main.tf": DEMO_MAIN_TF},
                                    {"marker_file": str(other_marker)})
    runs = [s.user.queue(s.workspace["id"]), s.user.queue(other["id"])]
    for run in runs:
        s.user.wait(run["id"], "apply_pending", warmup="ready")

    for run in runs:
        assert s.user.confirm(run["id"]).status_code == 200
    done = [s.user.wait(run["id"], "applied") for run in runs]

    assert [d["apply_path"] for d in done] == ["fast", "fast"], [d["apply_path_reason"] for d in done]
    assert s.applies() == 1 and other_marker.read_text().count("applied") == 1


def test_it_starts_a_plan_on_a_pool_whose_slots_are_all_reserved(scenario, tmp_path):
    s = scenario()
    s.agent("a1", slots=1)
    first = s.user.queue(s.workspace["id"])
    s.user.wait(first["id"], "apply_pending", warmup="ready")  # the only slot holds its warm dir
    other_marker = tmp_path / "other-applied.txt"
    other = s.user.create_workspace(f"{s.workspace['name']}-b", s.pool.id, {"main.tf": DEMO_MAIN_TF},
                                    {"marker_file": str(other_marker)})

    second = s.user.queue(other["id"])
    s.user.wait(second["id"], "apply_pending", timeout=30)
    released = s.user.run(first["id"])
    assert released["warmup_status"] == "none" and released["warmup_agent"] is None
    assert released["warmup_message"].startswith(f"reservation released to make room: pool {s.pool.name} was full")

    # Both still apply: the released run goes cold (or re-warmed), the other from its own dir.
    assert s.user.confirm(first["id"]).status_code == 200
    s.user.wait(first["id"], "applied", timeout=60)
    assert s.user.confirm(second["id"]).status_code == 200
    s.user.wait(second["id"], "applied", timeout=60)
    assert s.applies() == 1 and other_marker.read_text().count("applied") == 1


def test_it_sends_a_plans_apply_only_to_an_agent_with_its_terraform_version(scenario, tmp_path):
    real = terraform_version(real_terraform())
    fake = wrapper(tmp_path, "old-terraform",
                   'if [ "$1" = version ]; then echo \'{"terraform_version": "0.12.31"}\'; exit 0; fi')
    s = scenario()
    a1 = s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    s.user.wait(run["id"], "apply_pending", warmup="ready")
    assert s.user.run(run["id"])["terraform_version"] == real
    old = s.agent("old", env={"IAC_TERRAFORM_BIN": fake})
    a1.kill()
    wait_for(lambda: s.user.run(run["id"])["warmup_status"] == "none", 30, "a1's reservation to be released")

    assert s.user.confirm(run["id"]).status_code == 200
    waiting = wait_for(lambda: (r := s.user.run(run["id"]))["waiting_reason"] and r, 10, "a waiting reason")
    assert waiting["status"] == "apply_queued"
    assert f"has terraform {real}" in waiting["waiting_reason"] and "0.12.31" in waiting["waiting_reason"]

    a3 = s.agent("a3")
    done = s.user.wait(run["id"], "applied", timeout=60)
    assert done["apply_path"] == "cold"
    jobs = Job.objects.filter(task_id=run["id"]).select_related("agent")
    assert {j.agent.name for j in jobs if j.kind == "apply"} == {a3.name}
    assert old.name not in {j.agent.name for j in jobs if j.agent}
    assert s.applies() == 1


def test_it_holds_a_pinned_workspaces_plan_and_says_why(scenario, user):
    s = scenario()
    s.agent("a1")
    pinned = user.create_workspace(f"{s.workspace['name']}-pinned", s.pool.id, {"main.tf": DEMO_MAIN_TF},
                                   {"marker_file": "/dev/null"}, terraform_version="0.12.31")
    run = user.queue(pinned["id"])
    time.sleep(2)  # an agent with a free slot had every chance to take it
    waiting = user.run(run["id"])
    assert waiting["status"] == "plan_queued"
    assert waiting["waiting_reason"].startswith(f"queued: no online agent of pool '{s.pool.name}' has terraform 0.12.31")
