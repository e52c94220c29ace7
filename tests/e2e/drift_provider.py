"""A tiny terraform provider for the drift tests, written with the `tf` package ("Python
Terraform Provider framework"): `localfile_file` manages a file's content, and its read
returns what is on disk, so a refresh-only plan sees a change made behind terraform's back
(terraform_data reads nothing back). Installed by the test into an unpacked filesystem mirror
as an executable script: nothing is downloaded."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

SOURCE = "local/localfile"
VERSION = "1.0.0"
REL = Path("registry.terraform.io/local/localfile") / VERSION / "linux_amd64"
BINARY = f"terraform-provider-localfile_v{VERSION}"

PROVIDER_CODE = '''
from pathlib import Path

from tf import runner, schema, types
from tf.iface import Provider, Resource


class File(Resource):
    @classmethod
    def get_name(cls):
        return "file"

    @classmethod
    def get_schema(cls):
        return schema.Schema(attributes=[
            schema.Attribute("path", types.String(), required=True, requires_replace=True),
            schema.Attribute("content", types.String(), required=True),
            schema.Attribute("id", types.String(), computed=True),
        ])

    def __init__(self, provider):
        self.provider = provider

    def create(self, ctx, planned):
        Path(planned["path"]).write_text(planned["content"])
        return {**planned, "id": planned["path"]}

    def read(self, ctx, current):
        path = Path(current["path"])
        if not path.exists():
            return None
        return {**current, "content": path.read_text()}

    def update(self, ctx, current, planned):
        Path(planned["path"]).write_text(planned["content"])
        return {**planned, "id": planned["path"]}

    def delete(self, ctx, current):
        Path(current["path"]).unlink(missing_ok=True)

    def plan(self, ctx, current, planned):
        return planned

    def upgrade(self, ctx, version, old):
        return old


class LocalFile(Provider):
    def full_name(self):
        return "registry.terraform.io/local/localfile"

    def get_model_prefix(self):
        return "localfile_"

    def get_provider_schema(self, diags):
        return schema.Schema(attributes=[])

    def validate_config(self, diags, config):
        pass

    def configure_provider(self, diags, config):
        pass

    def get_data_sources(self):
        return []

    def get_resources(self):
        return [File]


runner.run_provider(LocalFile())
'''

REQUIRED = """
terraform {
  required_providers {
    localfile = {
      source  = "%s"
      version = "%s"
    }
  }
}
""" % (SOURCE, VERSION)


def install(mirror: Path) -> Path:
    """The provider as an executable in `mirror`'s unpacked layout; returns the mirror."""
    binary = mirror / REL / BINARY
    binary.parent.mkdir(parents=True, exist_ok=True)
    # The venv by its real path (a symlinked one would not resolve inside the sandbox).
    binary.write_text(f"#!{Path(sys.prefix).resolve() / 'bin' / 'python'}\n" + PROVIDER_CODE)
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return mirror
