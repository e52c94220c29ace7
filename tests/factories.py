"""Builders for test data. Each returns saved objects; plain tokens are returned beside them
because only their hashes are stored."""

from __future__ import annotations

import itertools

from agents_app.models import Agent, AgentPool
from agents_app.protocol import PROTOCOL_VERSION, Registration
from agents_app.services.agents import agent_register, pool_create
from tasks_app.models import Workspace
from tasks_app.services.configs import configuration_create_from_files

_seq = itertools.count(1)

# Built-in resources only: `terraform init` needs no provider download. The provisioner
# appends one line per apply to `marker_file`, so a test can count applies.
DEMO_MAIN_TF = """
variable "marker_file" {
  type = string
}

variable "greeting" {
  type    = string
  default = "hello"
}

resource "terraform_data" "demo" {
  input = var.greeting

  provisioner "local-exec" {
    command = "echo \\"applied ${self.input}\\" >> ${var.marker_file}"
  }
}

output "greeting" {
  value = terraform_data.demo.output
}
"""


def make_pool(**fields) -> tuple[AgentPool, str]:
    """A pool; `static` unless told: the tests start their agents by hand (self-hosted), and
    the live worker's autoscaler must not add pods of its own to their pools."""
    fields.setdefault("name", f"pool-{next(_seq)}")
    fields.setdefault("backend", "static")
    return pool_create(**fields)


def make_workspace(*, pool: AgentPool, files: dict[str, str] | None = None, **fields) -> Workspace:
    fields.setdefault("name", f"ws-{next(_seq)}")
    ws = Workspace.objects.create(pool=pool, **fields)
    if files is not None:
        configuration_create_from_files(workspace=ws, files=files, actor=None)
    return ws


def make_agent(*, pool: AgentPool, name: str | None = None, slots: int = 3, version: str = "",
               terraform_version: str = "") -> tuple[Agent, str]:
    """An agent registered the way an agent process registers (without a process)."""
    registered = agent_register(pool=pool, registration=Registration(
        name=name or f"agent-{next(_seq)}", slots=slots, version=version, protocol_version=PROTOCOL_VERSION,
        terraform_version=terraform_version,
    ))
    return registered.agent, registered.token


def make_token(user, name: str = "tests") -> str:
    """A user's API token (plain text; only its digest is stored)."""
    from tasks_app.services.tokens import token_create

    return token_create(user=user, name=name)[1]


def grant(user, workspace: Workspace, level: str, team_name: str | None = None):
    """Put `user` in a team with `level` on `workspace`; returns the team."""
    from django.contrib.auth.models import Group

    from tasks_app.models import WorkspaceAccess

    team, _ = Group.objects.get_or_create(name=team_name or f"team-{user.username}-{next(_seq)}")
    team.user_set.add(user)
    WorkspaceAccess.objects.update_or_create(workspace=workspace, team=team, defaults={"level": level})
    return team
