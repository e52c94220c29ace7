"""A workspace's variables never act on a process outside the sandbox.

The attack: upload a configuration that holds a compiled shared library, set LD_PRELOAD (or
LD_AUDIT, or LD_LIBRARY_PATH with a library named like one bwrap needs) to it, queue a plan.
Had bwrap, which runs outside the sandbox, got the variable in its environment, the library's
constructor would run as the agent's user on the host. The names are refused by the API;
rows holding them anyway (stored before the rule, written around it) are left out by the agent
with a warning; and, for a name no rule catches, the processes outside the sandbox never get
the job's environment at all: only terraform inside does."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from tasks_app.models import Variable, VariableCategory, Workspace
from tests.factories import make_pool
from tests.live import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Writes a line to a host path (compiled in) when loaded (constructor) or used as an audit
# library (la_version): the proof that the library ran, and in which program.
EVIL_C = r"""
#include <stdio.h>
#include <unistd.h>
static void mark(const char *how) {
    FILE *f = fopen(MARKER, "a");
    if (f) {
        char exe[256] = {0};
        readlink("/proc/self/exe", exe, sizeof exe - 1);
        fprintf(f, "%s %s\n", how, exe);
        fclose(f);
    }
}
__attribute__((constructor)) static void loaded(void) { mark("constructor"); }
unsigned int la_version(unsigned int version) { mark("audit"); return version; }
"""

# Strict sandbox: nothing of the host writable but the job's dir, so the marker's directory
# (the test's tmp_path) is out of reach of anything inside.
STRICT = {"IAC_AGENT_SANDBOX": "bwrap", "IAC_AGENT_SANDBOX_BIND_RW": ""}


def require_bwrap() -> str:
    bwrap = shutil.which("bwrap")
    assert bwrap, "bubblewrap is not installed: run `python scripts/test_prereqs.py` as root"
    return bwrap


def compile_libraries(build: Path, marker: Path, bwrap: str) -> dict[str, bytes]:
    """evil.so, and a stand-in for a library bwrap links (libselinux.so.1, ...): a filter on the
    real one, so a program that loads it runs as before, and the stand-in's constructor too."""
    build.mkdir()
    src = build / "evil.c"
    src.write_text(EVIL_C)
    define = f'-DMARKER="{marker}"'
    subprocess.run(["gcc", "-shared", "-fPIC", define, "-o", str(build / "evil.so"), str(src)], check=True)
    linked = subprocess.run(["ldd", bwrap], capture_output=True, text=True, check=True).stdout
    name, real = re.search(r"^\s*(lib(?!c\.so)\S+) => (/\S+)", linked, re.MULTILINE).groups()
    # The stand-in defines the symbol versions of the real library (their symbols come from it).
    defined = subprocess.run(["objdump", "-p", real], capture_output=True, text=True, check=True).stdout
    versions = re.findall(r"^\d+ 0x00 0x[0-9a-f]+ (\S+)$", defined, re.MULTILINE)
    version_map = build / "versions.map"
    version_map.write_text("".join(f"{v} {{ local: *; }};\n" for v in versions) or "{ local: *; };\n")
    libs = build / "libs"
    libs.mkdir()
    subprocess.run(["gcc", "-shared", "-fPIC", define, "-o", str(libs / name), str(src), f"-Wl,-soname,{name}",
                    f"-Wl,--version-script={version_map}", f"-Wl,--filter={real}"], check=True)
    # Outside any sandbox, each variable does run the library's code in bwrap: the attack works.
    for variable, value in {"LD_PRELOAD": build / "evil.so", "LD_AUDIT": build / "evil.so",
                            "LD_LIBRARY_PATH": libs}.items():
        probe = subprocess.run([bwrap, "--version"], env={variable: str(value)}, capture_output=True, check=False)
        assert probe.returncode == 0 and marker.exists(), f"the test library does not run with {variable}"
        marker.unlink()
    return {"evil.so": (build / "evil.so").read_bytes(), f"libs/{name}": (libs / name).read_bytes()}


def upload(user, workspace_id: int, files: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    user.request("POST", f"/api/v1/workspaces/{workspace_id}/configuration-versions/", data=buf.getvalue(),
                 headers={"Content-Type": "application/gzip"}, expect=201)


def inject(workspace_id: int, key: str, value: str) -> None:
    """A row the API would refuse, written straight into the database."""
    var = Variable(workspace=Workspace.objects.get(id=workspace_id), key=key, category=VariableCategory.ENV)
    var.set_value(value)
    var.save()


LOADER_VARIABLES = {"LD_PRELOAD": "./evil.so", "LD_AUDIT": "./evil.so", "LD_LIBRARY_PATH": "./libs"}


@pytest.mark.parametrize("sandbox", [STRICT, {"IAC_AGENT_SANDBOX": "off"}], ids=["bwrap", "sandbox-off"])
def test_no_library_of_an_upload_runs_outside_the_sandbox(user, start_agent, tmp_path, sandbox):
    """Sandbox off there is no wall (terraform runs as the agent), but the refused names are
    still left out."""
    bwrap = require_bwrap()
    marker = tmp_path / "escaped"
    libraries = compile_libraries(tmp_path / "build", marker, bwrap)
    pool, token = make_pool()
    ws = user.create_workspace(f"escape-{uuid.uuid4().hex[:8]}", pool.id, {"main.tf": "\n"})
    upload(user, ws["id"], {"main.tf": b'resource "terraform_data" "x" {}\n', **libraries})

    for key, value in LOADER_VARIABLES.items():
        refused = user.request("POST", f"/api/v1/workspaces/{ws['id']}/variables/",
                               json={"key": key, "value": value, "category": "env"})
        assert refused.status_code == 400
        assert "names starting with LD_ change how programs load" in refused.json()["detail"]
    assert not Variable.objects.filter(workspace_id=ws["id"]).exists()

    for key, value in LOADER_VARIABLES.items():
        inject(ws["id"], key, value)
    start_agent(token, f"escape-{pool.id}", env=sandbox)
    run = user.queue(ws["id"], operation="plan")
    user.wait(run["id"], "planned", timeout=120)
    log = user.log(run["id"])

    assert not marker.exists(), f"the upload's library ran outside the sandbox: {marker.read_text()}"
    for key in LOADER_VARIABLES:
        assert f"Warning: {key}: names starting with LD_ change how programs load and are refused; the variable " \
               "was left out of this run." in log
    assert "./evil.so" not in log and "./libs" not in log
    assert "Plan: 1 to add" in log


# Prints the variable it was given, then waits for the test to have looked at the machine's
# processes (a file the test creates: no timing).
WALL_TF = """
variable "go_file" { type = string }

resource "terraform_data" "probe" {
  provisioner "local-exec" {
    command = <<-EOT
      echo "probe: MY_SETTING=$MY_SETTING"
      echo "probe: waiting"
      for i in $(seq 600); do [ -e "${var.go_file}" ] && break; sleep 0.1; done
      echo "probe: done"
    EOT
  }
}
"""


def descendants(pid: int) -> dict[int, int]:
    """{pid: depth below `pid`} of every process under `pid`."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            parents[int(proc.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    depth: dict[int, int] = {}
    frontier, level = [pid], 0
    while frontier:
        level += 1
        frontier = [child for child, parent in parents.items() if parent in frontier]
        depth.update({child: level for child in frontier})
    return depth


def read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_a_variable_no_rule_catches_reaches_terraform_and_no_process_outside(user, start_agent, tmp_path):
    require_bwrap()
    secret = f"looks-secret-{uuid.uuid4().hex}"
    go = tmp_path / "go"
    pool, token = make_pool()
    ws = user.create_workspace(f"wall-{uuid.uuid4().hex[:8]}", pool.id, {"main.tf": WALL_TF}, {"go_file": str(go)})
    user.request("POST", f"/api/v1/workspaces/{ws['id']}/variables/", expect=201,
                 json={"key": "MY_SETTING", "value": secret, "category": "env"})
    agent = start_agent(token, f"wall-{pool.id}", env={"IAC_AGENT_SANDBOX": "bwrap"})  # tmp_path writable inside
    run = user.queue(ws["id"])
    user.wait(run["id"], "apply_pending")
    assert user.confirm(run["id"]).status_code == 200
    try:
        wait_for(lambda: "probe: waiting" in user.log(run["id"]), 90, "the probe to run")
        below = descendants(agent.proc.pid)
        outside = [pid for pid, depth in below.items() if depth == 1]  # what the agent started: bwrap
        inside = [pid for pid, depth in below.items() if depth > 1]
        names = {pid: read(Path(f"/proc/{pid}/comm")).strip().decode() for pid in below}
        assert outside and all(names[pid] == "bwrap" for pid in outside), names
        for pid in outside:
            assert secret.encode() not in read(Path(f"/proc/{pid}/environ")), f"{names[pid]} has the variable"
            assert secret.encode() not in read(Path(f"/proc/{pid}/cmdline")), f"{names[pid]}'s command line has it"
            assert b"MY_SETTING" not in read(Path(f"/proc/{pid}/environ"))
        # Inside, terraform and what it runs have it.
        assert any(f"MY_SETTING={secret}".encode() in read(Path(f"/proc/{pid}/environ")) for pid in inside)
    finally:
        go.touch()
    user.wait(run["id"], "applied", timeout=90)
    assert f"probe: MY_SETTING={secret}" in user.log(run["id"])
