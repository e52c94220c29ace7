"""Create (idempotently) the admin user, the `local` agent pool and the demo workspace.

Prints one JSON line with what the caller needs to start agents and to talk to the API."""

from __future__ import annotations

import json
import secrets

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand
from django.db import transaction

from agents_app.models import AgentPool
from agents_app.services.agents import pool_by_token, pool_create
from agents_app.services.pool_settings import pool_token_rotate
from iacplatform.env import env
from tasks_app.models import ApiToken, Variable, Workspace
from tasks_app.services.configs import configuration_create_from_files
from tasks_app.services.tokens import token_create

RUN_TOKEN_NAME = "make run"

DEMO_MAIN_TF = """# The demo workspace: built-in resources only, so `terraform init` works offline.
# Each apply appends a line to var/demo/applied.log on the agent's host.

variable "marker_file" {
  type = string
}

variable "greeting" {
  type    = string
  default = "hello from the IaC platform"
}

resource "terraform_data" "greeting" {
  input = var.greeting

  provisioner "local-exec" {
    command = "echo \\"$(date -u +%FT%TZ) applied: ${self.input}\\" >> ${var.marker_file}"
  }
}

output "greeting" {
  value = terraform_data.greeting.output
}
"""


class Command(BaseCommand):
    help = "Create the admin user, the local pool and the demo workspace (idempotent)."

    def handle(self, *args, **options) -> None:
        username = env.str("IAC_ADMIN_USERNAME", "admin")
        password = env.str("IAC_ADMIN_PASSWORD", "")
        password_file = settings.VAR_DIR / "admin-password"
        with transaction.atomic():
            user = User.objects.filter(username=username).first()
            if user is None:
                if not password:
                    password = password_file.read_text().strip() if password_file.exists() else secrets.token_urlsafe(12)
                    password_file.write_text(password)
                    password_file.chmod(0o600)
                user = User.objects.create_superuser(username, password=password)
            elif password:
                user.set_password(password)
                user.save()
            else:
                password = password_file.read_text().strip() if password_file.exists() else "(unchanged)"
            # Tokens are shown once (only a digest is stored): each `make run` gets a new one
            # and revokes the one the previous `make run` printed.
            ApiToken.objects.filter(user=user, name=RUN_TOKEN_NAME).delete()
            _, api_token = token_create(user=user, name=RUN_TOKEN_NAME)

            # The local pool's token is kept in a 0600 file under var/ (like the admin password)
            # so a restart reuses it: rotating it would revoke the agent's credential and with
            # it the warm dirs the agent keeps across restarts.
            pool_token_file = settings.VAR_DIR / "local-pool-token"
            pool = AgentPool.objects.filter(name="local").first()
            pool_token = pool_token_file.read_text().strip() if pool_token_file.exists() else ""
            if pool is None:
                pool, pool_token = pool_create(name="local", backend="local", min_replicas=1)
            elif not pool_token or pool_by_token(pool_token) != pool:
                pool_token = pool_token_rotate(pool=pool, actor=user)
            elif not pool.plain_token():
                # A pool from before pods kept only the token's hash; the autoscaler needs the
                # token itself (encrypted) to start the pool's agents. The file has it.
                pool.set_token(pool_token)
                pool.save(update_fields=["token_hash", "token_encrypted"])
            pool_token_file.write_text(pool_token)
            pool_token_file.chmod(0o600)

            ws = Workspace.objects.filter(name="demo").first()
            if ws is None:
                ws = Workspace.objects.create(name="demo", pool=pool)
                configuration_create_from_files(workspace=ws, files={"main.tf": DEMO_MAIN_TF}, actor=user)
                marker = Variable(workspace=ws, key="marker_file")
                marker.set_value(str(settings.VAR_DIR / "demo" / "applied.log"))
                marker.save()
            (settings.VAR_DIR / "demo").mkdir(parents=True, exist_ok=True)
        self.stdout.write(json.dumps({
            "username": username, "password": password, "api_token": api_token,
            "pool": pool.name, "pool_token": pool_token, "agents": max(pool.min_replicas, 1),
            "slots": pool.slots_per_pod, "workspace": ws.id,
        }))
