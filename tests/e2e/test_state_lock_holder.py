"""A state lock belongs to whoever took it: a real agent's terraform apply holds the workspace's
state lock (its job credential took it) while a person with `write` runs their own `terraform`
against the same http backend, knowing the lock ID from terraform's own error message. Their
LOCK, UNLOCK, push and force-unlock with that ID are refused; an admin's force-unlock works
and is audited as such."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from tasks_app.models import AccessLevel, AuditEvent, StateLock, StateVersion, Workspace
from tests.e2e.test_terraform_cli_backend import TerraformDir, output
from tests.factories import grant, make_token
from tests.live import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# The apply holds the state lock until the test creates `<marker_file>.go`; it says it is
# running by creating `<marker_file>.started` (the agents' sandbox may write to tmp_path).
GATED_TF = """
variable "marker_file" {
  type = string
}

resource "terraform_data" "gated" {
  input = "gated"

  provisioner "local-exec" {
    command = "touch ${var.marker_file}.started; while [ ! -e ${var.marker_file}.go ]; do sleep 0.1; done"
  }
}
"""


def _apply_holding_the_lock(scenario) -> tuple[object, dict, Workspace, StateLock, Path]:
    """A run whose apply (a real agent's terraform) is running and holds the state lock."""
    s = scenario(files={"main.tf": GATED_TF})
    s.agent("a1")
    run = s.user.queue(s.workspace["id"])
    s.user.wait(run["id"], "apply_pending")
    s.user.confirm(run["id"])
    started = Path(f"{s.marker}.started")
    wait_for(started.exists, 90, "the apply's provisioner to start")
    workspace = Workspace.objects.get(id=s.workspace["id"])
    lock = StateLock.objects.get(workspace=workspace)
    return s, run, workspace, lock, Path(f"{s.marker}.go")


def _cli(tmp_path: Path, name: str, live_url: str, workspace: Workspace, user: User) -> TerraformDir:
    tf = TerraformDir(tmp_path / name, live_url, workspace, make_token(user))
    init = tf.run("init", "-input=false")
    assert init.returncode == 0, output(init)
    return tf


def test_it_refuses_a_writer_who_presents_the_lock_id_of_a_running_apply(scenario, live_url, tmp_path):
    s, run, workspace, lock, go = _apply_holding_the_lock(scenario)
    assert lock.job_id is not None and lock.user_id is None
    bob = User.objects.create_user("bob", password="bob-password-1")
    grant(bob, workspace, AccessLevel.WRITE)
    tf = _cli(tmp_path, "bob", live_url, workspace, bob)

    # Terraform tells bob the holder's lock ID (our 423 body is the holder's lock info)...
    refused = tf.run("apply", "-auto-approve", "-input=false", "-lock-timeout=0s")
    assert refused.returncode != 0
    assert "Error acquiring the state lock" in refused.stderr and lock.lock_id in refused.stderr, output(refused)
    # ... and the ID gets him nothing: not a share of the lock, not its release, not a push.
    stolen = dict(lock.info)
    assert tf.http("LOCK", tf.lock_address, stolen).status_code == 423
    unlock = tf.http("UNLOCK", tf.lock_address, stolen)
    assert unlock.status_code == 409, unlock.text
    assert "only its holder can unlock it" in unlock.json()["detail"]
    push = tf.http("POST", f"{tf.address}?ID={lock.lock_id}",
                   {"version": 4, "serial": 99, "lineage": str(uuid.uuid4()), "resources": []})
    assert push.status_code == 423, push.text
    forced = tf.run("force-unlock", "-force", lock.lock_id)
    assert forced.returncode != 0, output(forced)
    assert StateLock.objects.get(workspace=workspace).job_id == lock.job_id
    assert not AuditEvent.objects.filter(action__in=["state.unlock", "state.force_unlock"],
                                         data__id=lock.lock_id).exists()
    assert not StateVersion.objects.filter(workspace=workspace).exists()

    # The holder's own push and unlock go through: the apply ends applied, the lock released.
    go.touch()
    s.user.wait(run["id"], "applied")
    assert StateVersion.objects.filter(workspace=workspace, task_id=run["id"]).exists()
    assert not StateLock.objects.filter(workspace=workspace).exists()


def test_it_lets_an_admin_force_unlock_a_running_apply_and_audits_it(scenario, live_url, tmp_path, alice):
    s, run, workspace, lock, go = _apply_holding_the_lock(scenario)
    tf = _cli(tmp_path, "alice", live_url, workspace, alice)

    unlocked = tf.run("force-unlock", "-force", lock.lock_id)

    assert unlocked.returncode == 0, output(unlocked)
    assert "successfully unlocked" in unlocked.stdout
    assert not StateLock.objects.filter(workspace=workspace).exists()
    event = AuditEvent.objects.get(action="state.force_unlock")
    assert (event.actor, event.data["id"]) == (alice, lock.lock_id)
    assert event.data["holder"] == f"job {lock.job_id}"
    go.touch()
    s.user.wait(run["id"], "applied", "errored")
