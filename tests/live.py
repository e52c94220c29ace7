"""The real platform for end-to-end tests: Daphne and a Celery worker (with beat) as
subprocesses on pytest-django's test database, plus real agent processes."""

from __future__ import annotations

import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from django.conf import settings

from agents_app.agent.sandbox import agent_environment, executable_paths
from agents_app.agent.terraform import resolve_terraform
from tests.e2e.apiclient import PlatformUser
from tests.factories import DEMO_MAIN_TF, make_pool, make_token

ROOT = Path(__file__).resolve().parent.parent
# pytest-xdist's worker id ("gw0", ...), "" in a serial session: each worker its own logs,
# beat schedule and ports.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
LOG_DIR = settings.VAR_DIR / "test-logs" / WORKER if WORKER else settings.VAR_DIR / "test-logs"

# Servers' ports: a block of its own per xdist worker, below the kernel's ephemeral range
# (32768-60999 by default), so that neither the other worker's servers nor any client
# socket takes a port between this check and the server's bind. A random start within the
# block: another session on the machine (another checkout's suite) rarely walks the same ports.
_PORT_BLOCK = 2000
_port_base = 20000 + (_PORT_BLOCK * int(WORKER[2:]) if WORKER[2:].isdigit() else 0) % 10000
_next_port = itertools.count(random.randrange(_PORT_BLOCK))


def free_port() -> int:
    for _ in range(_PORT_BLOCK):
        port = _port_base + next(_next_port) % _PORT_BLOCK
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in {_port_base}-{_port_base + _PORT_BLOCK - 1}")


def _database_url() -> str:
    db = settings.DATABASES["default"]
    host = db.get("HOST") or ""
    if host.startswith("/"):
        return f"postgresql://{db['USER']}:{db.get('PASSWORD') or ''}@/{db['NAME']}?host={host}"
    return f"postgresql://{db['USER']}:{db.get('PASSWORD') or ''}@{host}:{db.get('PORT') or 5432}/{db['NAME']}"


# The live server's /metrics answers this bearer token (tests/e2e/test_metrics.py).
METRICS_TOKEN = "e2e-metrics-token"


def server_env(base_url: str, *, redis_url: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=_database_url(),
        REDIS_URL=redis_url or settings.REDIS_URL,
        SECRET_KEY=settings.SECRET_KEY,
        IAC_VAR_DIR=str(settings.VAR_DIR),
        IAC_PUBLIC_URL=base_url,
        IAC_METRICS_TOKEN=METRICS_TOKEN,
        # The web processes' fallback sweep is on in real servers (the test process turns it
        # off, tests/env_plugin.py): 3 of the tests' 1 s sweep intervals, the default ratio.
        IAC_SWEEP_FALLBACK_AFTER_SECONDS="3",
        PYTHONUNBUFFERED="1",
    )
    return env


def _spawn(name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = open(LOG_DIR / f"{name}.log", "ab")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Platform:
    """Daphne and a Celery worker (with beat) on the test database: `live_url`'s, or a test's
    own (another Redis, for instance), started with `start_platform`."""

    def __init__(self, base: str, web: subprocess.Popen, worker: subprocess.Popen) -> None:
        self.base = base
        self.web = web
        self.worker = worker

    def stop(self) -> None:
        _stop(self.worker)
        _stop(self.web)


def start_platform(*, redis_url: str | None = None, tag: str = "") -> Platform:
    """Start Daphne and a worker (`-B`); returns once Daphne serves. Logs go to
    LOG_DIR/daphne<tag>.log and celery<tag>.log."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = server_env(base, redis_url=redis_url)
    web = _spawn(f"daphne{tag}", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                  "iacplatform.asgi:application"], env)
    worker = _spawn(f"celery{tag}", [sys.executable, "-m", "celery", "-A", "iacplatform", "worker", "-B",
                                     "--pool", "threads", "-c", "4", "-l", "info",
                                     "-s", str(settings.VAR_DIR / f"test-beat-schedule{WORKER}{tag}")], env)
    platform = Platform(base, web, worker)
    try:
        def up() -> bool:
            try:
                return requests.get(base + "/accounts/login/", timeout=1).status_code == 200
            except requests.RequestException:
                if web.poll() is not None:
                    raise AssertionError(f"daphne exited; see {LOG_DIR / f'daphne{tag}.log'}") from None
                return False

        wait_for(up, 60, "daphne to serve")
    except BaseException:
        platform.stop()
        raise
    return platform


@pytest.fixture(scope="session")
def live_url(django_db_setup, django_db_blocker) -> str:
    """Base URL of a real Daphne serving the platform, with a Celery worker and beat."""
    platform = start_platform()
    try:
        yield platform.base
    finally:
        platform.stop()
        # Pods the worker's autoscaler started for this session's `local` pools (the
        # autoscaling tests', and pools the API fuzzer creates) die with the session.
        from agents_app.pods.local import stop_all

        stop_all(settings.VAR_DIR, grace=5, database=settings.DATABASES["default"]["NAME"])


class AgentProcess:
    def __init__(self, proc: subprocess.Popen, name: str, work_root: Path) -> None:
        self.proc = proc
        self.name = name
        self.work_root = work_root

    def kill(self) -> None:
        """SIGKILL the agent and its terraform children: a machine dying, not a shutdown."""
        _stop(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        _stop(self.proc)


class AgentStarter:
    """Starts agent processes against one server URL; `stop_all` ends them."""

    def __init__(self, server_url: str, tmp_path: Path) -> None:
        self.server_url = server_url
        self.tmp_path = tmp_path
        self.started: list[AgentProcess] = []

    def __call__(self, pool_token: str, name: str, *, slots: int = 3, env: dict[str, str] | None = None,
                 wait: bool = True, server: str | None = None) -> AgentProcess:
        from agents_app.models import Agent

        tmp_path = self.tmp_path
        # Agents get what the platform gives them (an allowlist of this environment, the pool
        # token in IAC_POOL_TOKEN, not on the command line) and a work root outside tmp_path:
        # the sandbox lets terraform write to tmp_path (the tests' marker files, terraform
        # wrappers), which must not show the agents' dirs and credentials.
        work_root = tmp_path.parent / f"{tmp_path.name}-agents" / name
        agent_env = agent_environment(
            PYTHONUNBUFFERED="1", IAC_POOL_TOKEN=pool_token,
            IAC_AGENT_SANDBOX_BIND_RW=str(tmp_path),
            # Wrappers in tmp_path run the real terraform, which the sandbox then needs too.
            IAC_AGENT_SANDBOX_BIND=os.pathsep.join(str(p) for p in executable_paths(resolve_terraform(settings.VAR_DIR))),
        )
        agent_env.update(env or {})
        cmd = [sys.executable, "-m", "agents_app.agent", "--server", server or self.server_url,
               "--name", name, "--work-root", str(work_root), "--slots", str(slots)]
        proc = _spawn(f"agent-{name}", cmd, agent_env)
        agent = AgentProcess(proc, name, work_root)
        self.started.append(agent)
        if wait:
            def registered() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"agent {name} exited; see {LOG_DIR / f'agent-{name}.log'}")
                return Agent.objects.filter(name=name, status="online").exists()

            wait_for(registered, 30, f"agent {name} to register")
        return agent

    def stop_all(self) -> None:
        for agent in self.started:
            agent.stop()


@pytest.fixture
def start_agent(live_url, tmp_path) -> Callable[..., AgentProcess]:
    starter = AgentStarter(live_url, tmp_path)
    yield starter
    starter.stop_all()


_names = itertools.count(1)


@pytest.fixture
def user(live_url, alice) -> PlatformUser:
    token = make_token(alice)
    return PlatformUser(live_url, token)


class Scenario:
    """A pool, a workspace with the demo config, and a marker file counting applies."""

    def __init__(self, user: PlatformUser, start_agent, tmp_path: Path, *, warm_apply: bool = True,
                 files: dict[str, str] | None = None) -> None:
        self.user = user
        self.start_agent = start_agent
        self.pool, self.token = make_pool(warm_apply=warm_apply)
        self.marker = tmp_path / "applied.txt"
        n = next(_names)
        self.workspace = user.create_workspace(
            f"e2e-{n}", self.pool.id, files or {"main.tf": DEMO_MAIN_TF}, {"marker_file": str(self.marker)}
        )
        self.agents: dict[str, object] = {}

    def agent(self, name: str, **kw):
        proc = self.start_agent(self.token, f"{name}-{self.pool.id}", **kw)
        self.agents[name] = proc
        return proc

    def applies(self) -> int:
        return self.marker.read_text().count("applied") if self.marker.exists() else 0


@pytest.fixture
def scenario(user, start_agent, tmp_path):
    def make(**kw) -> Scenario:
        return Scenario(user, start_agent, tmp_path, **kw)

    return make

