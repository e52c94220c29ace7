"""The command-line client's own parts, without a platform (its runs against a real one are in
tests/e2e/test_cli.py)."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

from iacplatform.cli import archive, plan_summary_line


def test_importing_the_cli_imports_neither_django_nor_celery():
    code = (
        "import sys, iacplatform.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('django', 'celery', 'kombu', 'rest_framework', 'channels', 'tasks_app', 'agents_app'))\n"
        "print(','.join(bad))\n"
    )
    env = {"PATH": "/usr/bin:/bin"}  # no DJANGO_SETTINGS_MODULE: nothing may need it
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == ""


def test_the_cli_answers_help_without_the_platform():
    result = subprocess.run([sys.executable, "-m", "iacplatform.cli", "run", "--help"], capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin", "IAC_URL": "http://x", "IAC_TOKEN": "t"})
    assert result.returncode == 0 and "--auto-approve" in result.stdout


def test_the_archive_honours_terraformignore_and_skips_git_and_terraform_dirs(tmp_path):
    (tmp_path / "main.tf").write_text("# main")
    (tmp_path / "modules" / "net").mkdir(parents=True)
    (tmp_path / "modules" / "net" / "main.tf").write_text("# net")
    (tmp_path / "secrets.auto.tfvars").write_text("password = 1")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "out.bin").write_text("x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    (tmp_path / ".terraform" / "providers").mkdir(parents=True)
    (tmp_path / ".terraform" / "providers" / "p").write_text("bin")
    (tmp_path / ".terraformignore").write_text("# comments are fine\n*.tfvars\nbuild/\n!keep.tfvars\n")
    (tmp_path / "keep.tfvars").write_text("a = 1")

    data, names = archive(tmp_path)
    assert names == [".terraformignore", "keep.tfvars", "main.tf", "modules/net/main.tf"]
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == names
        assert tar.extractfile("modules/net/main.tf").read() == b"# net"


def test_the_plan_summary_reads_as_terraforms():
    assert plan_summary_line({"add": 1, "change": 2, "destroy": 0}) == "Plan: 1 to add, 2 to change, 0 to destroy."
    assert plan_summary_line(None) == "No plan summary."
