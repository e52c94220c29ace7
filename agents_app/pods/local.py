"""The `local` backend: agent processes on the server's own host (the embedded default).

Each pod is `python -m agents_app.agent --server <IAC_AGENT_URL> --name <pod> --slots N`:
- its environment is the agents' allowlist of this process's (`agent_environment`: never
  the server's SECRET_KEY, DATABASE_URL, REDIS_URL or admin password) plus the pool token
  in IAC_POOL_TOKEN (an environment variable, never on the command line: argv is
  world-readable);
- its work root is the agent's default, `$IAC_AGENT_WORK_ROOT/<pod>` or
  `~/.local/state/iac-agents/<pod>`, outside var/;
- it runs detached in a session of its own, so that a restart of the worker that spawned it
  (supervisord stops a program's whole process group) does not kill it;
- a marker `var/pods/<database>/<pod>.json` (pid, labels) is how `list` finds it again from any process;
  its output goes to `var/pods/<database>/<pod>.log` (pool ids are per database).

`delete` sends SIGTERM to the pod's process group (the agent and its terraform children),
then SIGKILL after IAC_POD_STOP_GRACE_SECONDS. `manage.py up`'s shutdown calls `stop_all` so
that Ctrl-C leaves no agent running.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from agents_app.agent.sandbox import agent_environment
from agents_app.pods.backends import BackendPod, PodBackendError, PodPhase, carries_our_labels, pod_labels

if TYPE_CHECKING:
    from agents_app.models import AgentPool

log = logging.getLogger(__name__)


def pods_dir(var_dir: Path | None = None) -> Path:
    """Where the markers of this database's pods are: `var/pods/<database>/`. Pool ids are
    per database, and one var dir may serve several (`make run`'s, the tests', a benchmark's):
    each reconciler sees only its own pods, never another database's pool with the same id."""
    return Path(var_dir or settings.VAR_DIR) / "pods" / settings.DATABASES["default"]["NAME"]


def _all_markers(var_dir: Path, database: str = "*") -> list[Path]:
    return sorted((Path(var_dir) / "pods").glob(f"{database}/*.json"))


def _alive(pid: int, name: str) -> bool:
    """The process `pid` runs and is our agent for `name` (not a recycled pid, not a zombie)."""
    try:
        # Our own child that exited is a zombie until reaped: reap it (harmless otherwise).
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in (b"Z", b"X") and name.encode() in argv


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the agent leads its own session and process group
    except ProcessLookupError:
        pass


def _stop(pid: int, name: str, grace: float) -> None:
    if not _alive(pid, name):
        return
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid, name):
            break
        time.sleep(0.1)
    # SIGKILL the group either way: terraform children the agent did not take down with it.
    _signal_group(pid, signal.SIGKILL)


class LocalBackend:
    def __init__(self, var_dir: Path | None = None) -> None:
        self.dir = pods_dir(var_dir)

    def _marker(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def create(self, pool: AgentPool, name: str, *, pool_token: str) -> BackendPod:
        if not pool_token:
            raise PodBackendError(f"pool '{pool.name}': no pool token to start an agent with")
        self.dir.mkdir(parents=True, exist_ok=True)
        labels = pod_labels(pool, name)
        argv = [sys.executable, "-m", "agents_app.agent", "--server", settings.IAC_AGENT_URL,
                "--name", name, "--slots", str(pool.slots_per_pod)]
        env = agent_environment(IAC_POOL_TOKEN=pool_token, PYTHONUNBUFFERED="1")
        try:
            with open(self.dir / f"{name}.log", "ab") as out:
                proc = subprocess.Popen(
                    argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    cwd=settings.BASE_DIR, start_new_session=True, close_fds=True,
                )
        except OSError as exc:
            raise PodBackendError(f"pool '{pool.name}': could not start agent {name}: {exc}") from exc
        marker = {"pid": proc.pid, "name": name, "labels": labels, "started": time.time()}
        tmp = self._marker(name).with_suffix(".tmp")
        tmp.write_text(json.dumps(marker))
        tmp.replace(self._marker(name))
        log.info("pool %s: started agent %s (pid %s)", pool.name, name, proc.pid)
        return BackendPod(name=name, backend_id=str(proc.pid), phase=PodPhase.RUNNING, labels=labels)

    def delete(self, pool: AgentPool, name: str) -> None:
        marker = _read_marker(self._marker(name))
        if marker is None or not carries_our_labels(marker.get("labels", {}), pool):
            return  # gone already (or not ours: never touched)
        _stop(int(marker["pid"]), name, settings.IAC_POD_STOP_GRACE_SECONDS)
        self._marker(name).unlink(missing_ok=True)
        log.info("pool %s: stopped agent %s (pid %s)", pool.name, name, marker["pid"])

    def list(self, pool: AgentPool) -> list[BackendPod]:
        pods = []
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            marker = _read_marker(path)
            if marker is None or not carries_our_labels(marker.get("labels", {}), pool):
                continue
            name, pid = marker["name"], int(marker["pid"])
            phase = PodPhase.RUNNING if _alive(pid, name) else PodPhase.GONE
            pods.append(BackendPod(name=name, backend_id=str(pid), phase=phase, labels=marker["labels"]))
        return pods


def stop_all(var_dir: Path, grace: float = 10.0, *, database: str = "*") -> list[str]:
    """Stop every local agent process whose marker is under `var_dir`, whatever its database
    (manage.py up's shutdown: Ctrl-C leaves nothing running), or only `database`'s (a test
    session's platform, beside others sharing the var dir). Returns the names stopped."""
    markers = [m for m in (_read_marker(p) for p in _all_markers(var_dir, database)) if m is not None]
    alive = [m for m in markers if _alive(int(m["pid"]), m["name"])]
    for marker in alive:
        _signal_group(int(marker["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + grace
    for marker in alive:
        while _alive(int(marker["pid"]), marker["name"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(int(marker["pid"]), marker["name"]):
            _signal_group(int(marker["pid"]), signal.SIGKILL)
    return [m["name"] for m in alive]


def running_agents(var_dir: Path) -> list[tuple[str, int]]:
    """(name, pid) of every local agent process alive under `var_dir` (any database)."""
    markers = [m for m in (_read_marker(p) for p in _all_markers(var_dir)) if m is not None]
    return [(m["name"], int(m["pid"])) for m in markers if _alive(int(m["pid"]), m["name"])]
