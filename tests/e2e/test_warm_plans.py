"""Warm plans, end to end: real agents with a provider cache fed from a packed (zipped) mirror
of a real provider, real terraform in the sandbox."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

from agents_app.agent.terraform import resolve_terraform
from agents_app.models import Agent
from bench.terraform_fixture import PROVIDER_SOURCE, PROVIDER_VERSION, ensure_packed_mirror
from tasks_app.dispatch.models import Job
from tasks_app.models import Plan
from tests.live import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MAIN_TF = """
terraform {
  required_providers {
    workato = {
      source  = "%(source)s"
      version = "%(version)s"
    }
  }
}

module "names" {
  source = "%(module)s"
}

resource "terraform_data" "demo" {
  input = module.names.name
  provisioner "local-exec" {
    command = "%(apply_command)s"
  }
}

output "name" {
  value = terraform_data.demo.output
}
"""


def config(lock: str, *, module: str = "./mod_a", apply_command: str = "true") -> dict[str, str]:
    return {
        "main.tf": MAIN_TF % {"source": PROVIDER_SOURCE, "version": PROVIDER_VERSION, "module": module,
                              "apply_command": apply_command},
        ".terraform.lock.hcl": lock,
        "mod_a/main.tf": 'output "name" {\n  value = "a"\n}\n',
        "mod_b/main.tf": 'output "name" {\n  value = "b"\n}\n',
    }


@pytest.fixture
def mirror(tmp_path_factory) -> tuple[Path, str]:
    return ensure_packed_mirror(tmp_path_factory.getbasetemp() / "packed-provider-mirror")


def cached_agent(s, name: str, mirror_dir: Path, **kw):
    return s.agent(name, env={"IAC_AGENT_PROVIDER_UPSTREAM": str(mirror_dir)}, **kw)


def plan_job(run_id: int) -> Job:
    return Job.objects.filter(task_id=run_id, kind="plan").latest("id")


def plan_once(s, *, expect: str = "planned") -> dict:
    run = s.user.queue(s.workspace["id"], operation="plan")
    return s.user.wait(run["id"], expect, "planned_no_changes")


def cache_counters(agent_name: str, installs: int, hits: int) -> dict:
    """The agent's provider cache as its heartbeats reported it, once it shows `installs` and `hits`."""
    def reported() -> dict | None:
        cache = Agent.objects.get(name=agent_name).provider_cache
        return cache if cache and (cache.get("installs"), cache.get("hits")) == (installs, hits) else None

    return wait_for(reported, 15, f"{agent_name}'s heartbeat to report {installs} install(s) and {hits} hit(s)")


def show_json(plans: list[bytes], files: dict[str, str], work: Path, mirror_dir: Path) -> list[dict]:
    """`terraform show -json` of each plan file, in one dir of their configuration (one init
    without the backend), minus what differs between any two plans (timestamps)."""
    work.mkdir(parents=True)
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    cli = work.parent / f"{work.name}.tfrc"
    cli.write_text(f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror_dir}"\n  }}\n}}\n')
    env = dict(os.environ, TF_CLI_CONFIG_FILE=str(cli), CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1")
    terraform = resolve_terraform(settings.VAR_DIR)
    subprocess.run([terraform, "init", "-backend=false", "-input=false", "-no-color"], cwd=work, env=env, check=True,
                   capture_output=True)
    shown = []
    for n, plan_bytes in enumerate(plans):
        (work / f"plan-{n}.out").write_bytes(plan_bytes)
        out = subprocess.run([terraform, "show", "-json", f"plan-{n}.out"], cwd=work, env=env, check=True,
                             capture_output=True).stdout
        shown.append(json.loads(out))
        shown[-1].pop("timestamp", None)
    return shown


def test_it_plans_warm_the_second_time_without_init_and_with_the_same_json_plan(scenario, mirror, tmp_path):
    mirror_dir, lock = mirror
    files = config(lock)
    s = scenario(files=files)
    a1 = cached_agent(s, "a1", mirror_dir)

    first = plan_once(s)
    second = plan_once(s)

    cold, warm = plan_job(first["id"]), plan_job(second["id"])
    assert (cold.plan_start, warm.plan_start) == ("cold", "warm")
    assert (cold.sandbox, warm.sandbox) == ("bwrap", "bwrap")  # the cache is bound read-only into the sandbox
    # The agent reports the terraform commands it ran, timed: the warm plan ran no init.
    assert [c["command"] for c in cold.commands] == ["init", "plan", "show"]
    assert [c["command"] for c in warm.commands] == ["plan", "show"]
    assert all(c["ended_at"] > c["started_at"] and c["exit_code"] in (0, 2) for c in cold.commands + warm.commands)
    assert cold.commands[0]["started_at"] >= cold.claimed_at.timestamp() - 1  # the agent's clock, this machine's
    assert first["plan_start"] == "cold" and first["plan_start_reason"] == "no warm plan dir of this workspace on this agent"
    assert second["plan_start"] == "warm" and "unchanged" in second["plan_start_reason"]
    cold_log, warm_log = s.user.log(first["id"]), s.user.log(second["id"])
    assert "Initializing" in cold_log and f"{PROVIDER_VERSION} installed (miss)" in cold_log
    assert "Initializing" not in warm_log and "installed" not in warm_log  # no init, no provider install
    assert "[warm plan dir:" in warm_log
    # The warm plan finds (and leases) its provider in the cache: a hit, no install.
    counters = cache_counters(a1.name, installs=1, hits=1)
    assert counters["entries"] == 1 and counters["misses"] == 1
    assert counters["size_bytes"] > 10_000_000  # the real provider, unpacked

    cold_json, warm_json = show_json([Plan.objects.get(task_id=run["id"]).data for run in (first, second)], files,
                                     tmp_path / "show", mirror_dir)
    assert cold_json["resource_changes"] and warm_json == cold_json


def test_it_installs_a_provider_once_for_three_slots_initialising_at_once(scenario, user, mirror):
    mirror_dir, lock = mirror
    s = scenario(files=config(lock))
    others = [user.create_workspace(f"{s.workspace['name']}-{n}", s.pool.id, config(lock)) for n in (2, 3)]
    runs = [user.queue(ws["id"], operation="plan") for ws in [s.workspace, *others]]
    a1 = cached_agent(s, "a1", mirror_dir, slots=3)  # starts after the queueing: takes all three at once

    for run in runs:
        user.wait(run["id"], "planned", "planned_no_changes", timeout=120)
    jobs = [plan_job(run["id"]) for run in runs]
    assert all(job.plan_start == "cold" for job in jobs)
    starts = sorted(job.claimed_at for job in jobs)
    assert (starts[-1] - starts[0]).total_seconds() < 2  # they ran at once
    counters = cache_counters(a1.name, installs=1, hits=2)
    assert counters["entries"] == 1 and counters["misses"] == 1
    logs = [user.log(run["id"]) for run in runs]
    assert sum("installed (miss)" in log for log in logs) == 1
    assert sum(f"{PROVIDER_VERSION} hit" in log for log in logs) == 2


def test_it_plans_cold_with_the_reason_when_the_lock_file_or_a_module_source_changes(scenario, user, mirror):
    mirror_dir, lock = mirror
    s = scenario(files=config(lock))
    cached_agent(s, "a1", mirror_dir)
    plan_once(s)
    assert plan_once(s)["plan_start"] == "warm"

    # The same provider, its lock file with one hash fewer: init must run again.
    changed_lock = "\n".join(line for line in lock.splitlines() if "zh:" not in line) + "\n"
    user.request("POST", f"/api/v1/workspaces/{s.workspace['id']}/configuration-versions/",
                 json={"files": config(changed_lock)}, expect=201)
    after_lock = plan_once(s)
    assert after_lock["plan_start"] == "cold"
    assert after_lock["plan_start_reason"] == "the lock file (.terraform.lock.hcl) changed"
    assert "Initializing" in s.user.log(after_lock["id"])

    user.request("POST", f"/api/v1/workspaces/{s.workspace['id']}/configuration-versions/",
                 json={"files": config(changed_lock, module="./mod_b")}, expect=201)
    after_module = plan_once(s)
    assert after_module["plan_start"] == "cold"
    assert after_module["plan_start_reason"] == "module sources or versions changed"
    assert plan_job(after_module["id"]).plan_start_reason == "module sources or versions changed"


def test_it_plans_cold_when_user_code_planted_a_file_in_the_warm_dir(scenario, mirror):
    mirror_dir, lock = mirror
    s = scenario(files=config(lock))
    a1 = cached_agent(s, "a1", mirror_dir)
    # The apply's local-exec runs in the job dir with write access to .terraform/; the
    # provider cache it also tries is bound read-only.
    cache = a1.work_root / ".providers"
    plant = ("echo '#!/bin/sh' > .terraform/planted && chmod +x .terraform/planted; "
             f"(touch {cache}/planted 2>/dev/null && echo cache-$((1+1))-writable) || echo cache-$((1+1))-read-only")
    s.user.request("POST", f"/api/v1/workspaces/{s.workspace['id']}/configuration-versions/",
                   json={"files": config(lock, apply_command=plant)}, expect=201)
    run = s.user.queue(s.workspace["id"])
    s.user.wait(run["id"], "apply_pending", warmup="ready")
    s.user.confirm(run["id"])
    s.user.wait(run["id"], "applied")
    # (The arithmetic keeps terraform's echo of the command itself from matching.)
    assert "cache-2-read-only" in s.user.log(run["id"]) and not (cache / "planted").exists()

    after = plan_once(s)
    assert after["plan_start"] == "cold"
    assert after["plan_start_reason"] == (
        "the warm plan dir is not as init left it: .terraform/planted was not produced by init (added after it)")
    assert "Initializing" in s.user.log(after["id"])
    # The next one is warm again: the cold plan's own init output was kept.
    assert plan_once(s)["plan_start"] == "warm"


def test_it_sends_the_next_plan_to_the_agent_holding_the_workspace_warm(scenario, mirror):
    mirror_dir, lock = mirror
    s = scenario(files=config(lock))
    agents = [cached_agent(s, name, mirror_dir) for name in ("a1", "a2")]
    first = plan_once(s)
    holder = plan_job(first["id"]).agent.name
    assert holder in {a.name for a in agents}

    for _ in range(3):
        again = plan_once(s)
        job = plan_job(again["id"])
        assert (job.agent.name, job.plan_start) == (holder, "warm")


def test_it_plans_warm_after_an_apply_of_the_same_workspace(scenario):
    # An applied run's dir (the plan's, kept for its apply) becomes the warm plan dir too; a
    # configuration with no provider to install has no lock file, and is warm all the same.
    s = scenario()
    s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    s.user.wait(run["id"], "apply_pending")
    s.user.confirm(run["id"])
    s.user.wait(run["id"], "applied")
    assert plan_job(run["id"]).plan_start == "cold"

    after = plan_once(s, expect="planned_no_changes")
    assert after["plan_start"] == "warm" and "unchanged" in after["plan_start_reason"], after["plan_start_reason"]
    assert "Initializing" not in s.user.log(after["id"])  # no init
