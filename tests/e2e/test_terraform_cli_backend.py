"""A person's own `terraform` CLI against the platform's http state backend, served by a real
Daphne on the test database: init, apply, state pull, and a refused apply while someone
else holds the state lock."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.contrib.auth.models import User

from agents_app.agent.terraform import resolve_terraform
from tasks_app.models import AuditEvent, StateLock, StateVersion, Workspace
from tests.factories import make_token

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MAIN_TF = """
terraform {{
  backend "http" {{
    address        = "{address}"
    lock_address   = "{lock_address}"
    unlock_address = "{lock_address}"
    username       = "alice"
    password       = "{password}"
  }}
}}

variable "greeting" {{
  type    = string
  default = "hello"
}}

resource "terraform_data" "demo" {{
  input = var.greeting
}}

output "greeting" {{
  value = terraform_data.demo.output
}}
"""


class TerraformDir:
    """A directory holding a backend config for one workspace, and a way to run terraform in it."""

    def __init__(self, path: Path, live_url: str, workspace: Workspace, token: str) -> None:
        self.path = path
        self.address = f"{live_url}/api/v1/workspaces/{workspace.id}/state"
        self.lock_address = f"{self.address}/lock"
        self.token = token
        path.mkdir(parents=True, exist_ok=True)
        (path / "main.tf").write_text(
            MAIN_TF.format(address=self.address, lock_address=self.lock_address, password=token)
        )
        cli_config = path.parent / "empty.tfrc"
        cli_config.write_text("")
        self.env = dict(
            os.environ,
            TF_IN_AUTOMATION="1",
            TF_CLI_CONFIG_FILE=str(cli_config),
            CHECKPOINT_DISABLE="1",  # no calls to checkpoint-api.hashicorp.com
        )
        self.terraform = resolve_terraform(settings.VAR_DIR)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        # -no-color: the messages asserted on must not be split by colour escape codes.
        return subprocess.run(
            [self.terraform, *args, "-no-color"],
            cwd=self.path, env=self.env, capture_output=True, text=True, timeout=180,
        )

    def http(self, method: str, url: str, body: dict | None = None) -> requests.Response:
        return requests.request(method, url, json=body, auth=("alice", self.token), timeout=10)


@pytest.fixture
def tf(tmp_path: Path, live_url: str, workspace: Workspace, alice: User) -> TerraformDir:
    token = make_token(alice)
    return TerraformDir(tmp_path / "config", live_url, workspace, token)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def test_it_keeps_the_state_of_a_cli_apply_and_serves_it_back(tf: TerraformDir, workspace: Workspace, alice: User) -> None:
    init = tf.run("init", "-input=false")
    assert init.returncode == 0, output(init)

    apply = tf.run("apply", "-auto-approve", "-input=false")
    assert apply.returncode == 0, output(apply)
    assert "Apply complete! Resources: 1 added" in apply.stdout

    pull = tf.run("state", "pull")
    assert pull.returncode == 0, output(pull)
    pulled = json.loads(pull.stdout)
    newest = StateVersion.objects.filter(workspace=workspace).order_by("-serial").first()
    assert newest is not None
    assert (pulled["serial"], pulled["lineage"]) == (newest.serial, newest.lineage)
    assert pulled["outputs"]["greeting"]["value"] == "hello"
    assert newest.created_by == alice
    # Terraform released its lock when the apply finished.
    assert not StateLock.objects.filter(workspace=workspace).exists()

    # A second apply that changes something writes a newer serial of the same lineage.
    again = tf.run("apply", "-auto-approve", "-input=false", "-var", "greeting=bonjour")
    assert again.returncode == 0, output(again)
    latest = StateVersion.objects.filter(workspace=workspace).order_by("-serial").first()
    assert latest.serial > newest.serial
    assert latest.lineage == newest.lineage


def test_it_refuses_a_cli_apply_while_someone_else_holds_the_lock(tf: TerraformDir, workspace: Workspace) -> None:
    assert tf.run("init", "-input=false").returncode == 0
    holder_id = str(uuid.uuid4())
    holder = {
        "ID": holder_id,
        "Operation": "OperationTypeApply",
        "Info": "",
        "Who": "bob@build-server",
        "Version": "1.11.4",
        "Created": "2025-01-01T00:00:00Z",
        "Path": "",
    }
    taken = tf.http("LOCK", tf.lock_address, holder)
    assert taken.status_code == 200, taken.text

    refused = tf.run("apply", "-auto-approve", "-input=false", "-lock-timeout=0s")

    assert refused.returncode != 0
    assert "Error acquiring the state lock" in refused.stderr, output(refused)
    # Terraform names the holder's lock ID from our 423 body.
    assert holder_id in refused.stderr, output(refused)
    assert not StateVersion.objects.filter(workspace=workspace).exists()
    assert StateLock.objects.get(workspace=workspace).lock_id == holder_id

    # Once the holder lets go, the same apply goes through.
    released = tf.http("UNLOCK", tf.lock_address, holder)
    assert released.status_code == 200, released.text
    applied = tf.run("apply", "-auto-approve", "-input=false", "-lock-timeout=0s")
    assert applied.returncode == 0, output(applied)
    assert StateVersion.objects.filter(workspace=workspace).exists()


def test_it_lets_terraform_force_unlock_a_stuck_lock(tf: TerraformDir, workspace: Workspace, alice: User) -> None:
    assert tf.run("init", "-input=false").returncode == 0
    stuck_id = str(uuid.uuid4())
    stuck = {"ID": stuck_id, "Operation": "OperationTypeApply", "Who": "crashed-runner", "Version": "1.11.4"}
    assert tf.http("LOCK", tf.lock_address, stuck).status_code == 200

    # Terraform's http backend sends force-unlock as an UNLOCK without lock info.
    unlocked = tf.run("force-unlock", "-force", stuck_id)

    assert unlocked.returncode == 0, output(unlocked)
    assert "successfully unlocked" in unlocked.stdout
    assert not StateLock.objects.filter(workspace=workspace).exists()
    event = AuditEvent.objects.get(action="state.force_unlock")
    assert (event.actor, event.data["id"], event.data["who"]) == (alice, stuck_id, "crashed-runner")
