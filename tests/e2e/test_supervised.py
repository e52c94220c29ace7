"""`manage.py up` (what `make run` runs) supervises everything: in a var dir of its own, with
its own embedded PostgreSQL and Redis, it brings back a SIGKILLed web and Redis, recovers
from a PostgreSQL restart without restarting anything else, answers 503 while PostgreSQL is
down, and leaves nothing running after Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from iacplatform import embedded
from tests.e2e.apiclient import PlatformUser
from tests.live import LOG_DIR, ROOT, free_port, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.longest]


@dataclass
class Up:
    proc: subprocess.Popen
    root: Path
    var: Path
    base: str
    output: Path
    env: dict[str, str]

    @property
    def conf(self) -> Path:
        return self.var / "supervisor" / "supervisord.conf"

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def ctl(self, *args: str) -> str:
        # The interface the fault suite relies on.
        done = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=60)
        return done.stdout.strip()

    def pid(self, name: str) -> int:
        out = self.ctl("pid", name)
        return int(out) if out.isdigit() else 0

    def running(self, name: str) -> bool:
        return "RUNNING" in self.ctl("status", name)

    def agent_pids(self) -> list[int]:
        """The local pool's agents: pods of the local backend, each a marker with its pid
        (the interface bench/faults.py relies on), alive."""
        pids = []
        for marker in sorted((self.var / "pods").glob("*/*.json")):
            try:
                pid = json.loads(marker.read_text())["pid"]
            except (OSError, ValueError):
                continue
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                pids.append(pid)
        return pids


def _processes_of(var: Path) -> list[psutil.Process]:
    """Every process started for this var dir: its path on the command line (postgres -D,
    redis-server's socket, beat's schedule) or IAC_VAR_DIR in its environment (the rest)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid == os.getpid():
                continue
            if any(str(var) in part for part in proc.info["cmdline"] or []) or proc.environ().get("IAC_VAR_DIR") == str(var):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


@pytest.fixture
def up() -> Iterator[Up]:
    # Not pytest's tmp_path (0700): PostgreSQL runs as its own user when we are root.
    root = Path(tempfile.mkdtemp(prefix="iac-up-"))
    root.chmod(0o755)
    var = root / "var"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "IAC_PUBLIC_URL", "IAC_AGENT_URL")}
    # Short timings (tests/env_plugin.py sets them for the suite; a program counts as started
    # after 1 s, not 3: up's start, each restart and `supervisorctl start` wait that long; a
    # request while PostgreSQL is stopped waits 3 s for a connection, not 10, before its 503)
    # and the agents' work dirs in this test's dir.
    env.update(IAC_VAR_DIR=str(var), IAC_AGENT_WORK_ROOT=str(root / "agents"), IAC_AGENT_HEARTBEAT_SECONDS="1",
               IAC_AGENT_OFFLINE_AFTER_SECONDS="4", IAC_SWEEP_INTERVAL_SECONDS="1", IAC_UP_START_SECONDS="1",
               IAC_DB_POOL_TIMEOUT_SECONDS="3", PYTHONUNBUFFERED="1")
    output = root / "up.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen([sys.executable, "manage.py", "up", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    handle = Up(proc, root, var, f"http://127.0.0.1:{port}", output, env)
    try:
        yield handle
    finally:
        if proc.poll() is None:  # the test failed: SIGTERM, as a user's `kill` would
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        embedded.stop_servers(var)
        for leftover in _processes_of(var) + [psutil.Process(p) for p in handle.agent_pids()]:
            leftover.kill()
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy(output, LOG_DIR / "up-supervised.out")
        if (var / "logs").is_dir():
            shutil.copytree(var / "logs", LOG_DIR / "up-supervised-logs", dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_it_supervises_everything_and_stops_everything(up: Up):
    def is_up() -> bool:
        if up.proc.poll() is not None:
            raise AssertionError(f"manage.py up exited with {up.proc.returncode}:\n{up.text()}")
        return f"The platform is up at {up.base}/" in up.text()

    wait_for(is_up, 120, "manage.py up to print its URL", interval=0.5)
    assert requests.get(up.base + "/healthz/ready", timeout=10).status_code == 200
    text = up.text()
    token = re.search(r"API token:\s+(\S+)", text).group(1)
    workspace = int(re.search(r"/workspaces/(\d+)/", text).group(1))
    assert up.conf.stat().st_mode & 0o077 == 0  # it holds the servers' environment
    # /metrics always needs its token, loopback or not; `up` wrote one and says where.
    token_file = Path(re.search(r"metrics: .* the token is in (\S+) \(mode 0600\)", text).group(1))
    assert token_file == up.var / "metrics_token" and token_file.stat().st_mode & 0o077 == 0
    assert requests.get(up.base + "/metrics", timeout=10).status_code == 401
    scraped = requests.get(up.base + "/metrics", timeout=10,
                           headers={"Authorization": f"Bearer {token_file.read_text().strip()}"})
    assert scraped.status_code == 200 and "iac_runs" in scraped.text
    for name in ("postgres", "redis", "web", "worker", "beat"):
        assert up.running(name), up.ctl("status")
    # The autoscaler started the local pool's one agent (min 1), in a session of its own.
    wait_for(lambda: len(up.agent_pids()) == 1, 60, "the autoscaler to start the local pool's agent")
    agent_pid = up.agent_pids()[0]
    assert os.getsid(agent_pid) == agent_pid
    # The environment reaches the servers (the sweep's short interval) and the agents (their
    # work root), but the server-only settings do not reach the agents.
    # (postgres and redis-server get it too, but write their process titles over their
    # environment block: /proc cannot show it.)
    for name in ("web", "worker", "beat"):
        server_env = psutil.Process(up.pid(name)).environ()
        assert server_env["IAC_AGENT_OFFLINE_AFTER_SECONDS"] == "4", name
        assert server_env[embedded.SUPERVISED_ENV] == "1", name
    agent_env = psutil.Process(agent_pid).environ()
    assert agent_env["IAC_AGENT_WORK_ROOT"] == str(up.root / "agents")
    assert agent_env["IAC_POOL_TOKEN"]
    assert "IAC_AGENT_OFFLINE_AFTER_SECONDS" not in agent_env and embedded.SUPERVISED_ENV not in agent_env

    # A second `manage.py up` on the same var dir would fight over its servers: refused.
    second = subprocess.run([sys.executable, "manage.py", "up", "--port", str(free_port())], cwd=ROOT,
                            env=dict(up.env), capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    assert "is in use by another `manage.py up` or a test session" in second.stderr

    # SIGKILL web: supervisord starts it again, and it serves.
    old = up.pid("web")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: up.pid("web") not in (0, old) and up.running("web"), 30, "web to be restarted")
    wait_for(lambda: _status(up.base + "/healthz/live") == 200, 30, "the restarted web to serve")
    assert "exited: web (terminated by SIGKILL; not expected)" in up.text()

    # SIGKILL Redis: back too.
    old = up.pid("redis")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: up.pid("redis") not in (0, old) and embedded.redis_running(up.var), 30, "redis to be restarted")

    # PostgreSQL stopped: requests answer 503 with Retry-After (no 500, no traceback page).
    user = PlatformUser(up.base, token)
    assert "stopped" in up.ctl("stop", "postgres")
    down = user.request("GET", "/api/v1/workspaces/")
    assert down.status_code == 503, down.text[:500]
    assert down.headers["Retry-After"].isdigit()
    assert "database is unavailable" in down.json()["detail"]
    assert "started" in up.ctl("start", "postgres")

    # PostgreSQL restarted: web, worker and agents recover without a restart of their own.
    pids = {name: up.pid(name) for name in ("web", "worker", "beat")}
    assert "started" in up.ctl("restart", "postgres")
    restarted_at = time.time()
    for _ in range(10):  # every pooled connection died with the old server: none is handed out
        user.request("GET", "/api/v1/workspaces/", expect=200)
    run = user.queue(workspace)
    user.wait(run["id"], "apply_pending", timeout=90)
    confirmed = user.confirm(run["id"])
    assert confirmed.status_code == 200, confirmed.text[:500]
    assert user.wait(run["id"], "applied", timeout=90)["status"] == "applied"
    assert {name: up.pid(name) for name in pids} == pids
    assert up.agent_pids() == [agent_pid]
    # The Celery sweep ticks again (its time is in PostgreSQL).
    wait_for(lambda: _last_sweep(up.base) > restarted_at, 30, "a sweep after the restart")

    # Ctrl-C: everything stops, PostgreSQL and Redis included.
    os.kill(up.proc.pid, signal.SIGINT)
    started = time.monotonic()
    up.proc.wait(timeout=60)
    wait_for(lambda: not _processes_of(up.var), max(1.0, 20 - (time.monotonic() - started)),
             "every process of the var dir to stop", interval=0.2)
    assert not embedded.postgres_running(up.var)
    assert not embedded.redis_running(up.var)
    # The local backend's agents run detached from supervisord: up's shutdown stopped them.
    # (Its exit is waited for, within the same bound: under load it may end a moment after up.)
    wait_for(lambda: not up.agent_pids() and not _alive(agent_pid), max(1.0, 20 - (time.monotonic() - started)),
             "the local pool's agent to stop", interval=0.2)


def _last_sweep(base: str) -> float:
    from datetime import datetime

    body = requests.get(base + "/healthz/ready", timeout=10).json()
    last = body["checks"]["sweep"].get("last_sweep_at")
    return datetime.fromisoformat(last).timestamp() if last else 0.0


def _status(url: str) -> int:
    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return 0
