"""What a job's terraform needs for `terraform_remote_state` with backend "remote" against
the platform: the platform's public host name (as the configuration names it) pointed at the
server the agent reaches, and the job's own credential for it.

The host mapping is a CLI configuration `host` block (terraform discovers services over
https only; the agent reaches the server over whatever IAC_AGENT_URL is), written into the
job's dir with the agent's own CLI configuration (a provider mirror's) before it. The
credential goes only through the environment (TF_TOKEN_<host>), never into a file: the
server accepts it for the state reads remote state sharing allows, and forgets it when the
job ends (tasks_app/tfe/sharing.py)."""

from __future__ import annotations

import json
from pathlib import Path

CLI_CONFIG_NAME = ".iac-terraform.tfrc"


def token_variable(hostname: str) -> str:
    """terraform's TF_TOKEN_<host> name: dots as underscores, hyphens as double underscores
    (a port stays as it is: the name goes straight into the environment, no shell)."""
    return "TF_TOKEN_" + hostname.replace("-", "__").replace(".", "_")


def remote_state_env(*, job_dir: Path, hostname: str, server_url: str, credential: str,
                     base_cli_config: str | None) -> dict[str, str]:
    services = json.dumps(f"{server_url.rstrip('/')}/api/v2/")
    text = ""
    if base_cli_config:
        try:
            text = Path(base_cli_config).read_text() + "\n"
        except OSError:
            text = ""
    text += (f'host {json.dumps(hostname)} {{\n  services = {{\n    "tfe.v2" = {services}\n'
             f'    "tfe.v2.1" = {services}\n    "state.v2" = {services}\n  }}\n}}\n')
    path = job_dir.absolute() / CLI_CONFIG_NAME
    path.write_text(text)
    return {"TF_CLI_CONFIG_FILE": str(path), token_variable(hostname): credential}
