"""A terraform CLI configuration for this platform: what `make run` writes into
`var/terraform.tfrc` and prints an `export TF_CLI_CONFIG_FILE=…` line for.

terraform finds a host's services by fetching `https://HOST/.well-known/terraform.json`:
over https only. A `host` block names the services instead, so the CLI talks to a platform
served over plain http (the same machine, a laptop's `make run`) with no certificate to make
or trust. Behind an ingress with a real certificate none of this is needed: discovery works
(docs/operations.md).

The host's name is the public URL's host and port, as the `cloud` block's `hostname` names it
(terraform accepts `127.0.0.1:8000`)."""

from __future__ import annotations

import json
from urllib.parse import urlsplit


def cli_hostname(public_url: str) -> str:
    return urlsplit(public_url).netloc


def cli_config(public_url: str, token: str | None = None) -> str:
    host = cli_hostname(public_url)
    services = json.dumps(f"{public_url.rstrip('/')}/api/v2/")
    text = f'host "{host}" {{\n  services = {{\n    "tfe.v2" = {services}\n  }}\n}}\n'
    if token:
        text += f'\ncredentials "{host}" {{\n  token = {json.dumps(token)}\n}}\n'
    return text


def cloud_block(public_url: str, organization: str, workspace: str) -> str:
    return (f'terraform {{\n  cloud {{\n    hostname     = "{cli_hostname(public_url)}"\n'
            f'    organization = "{organization}"\n    workspaces {{\n      name = "{workspace}"\n    }}\n  }}\n}}\n')
