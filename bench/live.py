"""A real platform of its own for a benchmark: a fresh database on the embedded PostgreSQL,
a Redis of its own, Daphne, a Celery worker with beat, and agent processes.

Call `BenchPlatform.bootstrap_env()` BEFORE `django.setup()`: it creates the database and
points this process's settings (DATABASE_URL, REDIS_URL, IAC_*) at it, so the benchmark
process and the servers it starts see the same platform."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import django
import psycopg
import requests
from django.conf import settings

from agents_app.agent.sandbox import agent_environment, executable_paths
from agents_app.agent.terraform import resolve_terraform
from iacplatform import embedded

# The platform's models and services are imported inside functions: they can be imported only
# after bootstrap_env() has pointed the settings at the benchmark's database and django.setup().

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BENCH_DB = "iac_bench"

# Short control-loop timings so a killed agent is noticed within seconds.
SERVER_TIMINGS = {
    "IAC_AGENT_HEARTBEAT_SECONDS": "1",
    "IAC_AGENT_OFFLINE_AFTER_SECONDS": "3",
    "IAC_SWEEP_INTERVAL_SECONDS": "1",
}


def say(text: str) -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _with_dbname(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


class Proc:
    """A child in its own process group (so terraform grandchildren die with it)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the whole group: a machine dying, not a shutdown."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait()
        self._log.close()

    def stop(self, timeout: float = 10) -> None:
        if self.alive():
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (e.g. a terraform child) goes too.
        self.signal_group(signal.SIGKILL)
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


class BenchPlatform:
    def __init__(
        self,
        *,
        var_dir: Path,
        shared_redis: bool = False,
        say: Callable[[str], None] = print,
        db_name: str = BENCH_DB,
        subdir: str = "bench",
        server_timings: dict[str, str] | None = None,
    ) -> None:
        self.var_dir = var_dir
        # None: SERVER_TIMINGS (short control loops, for benchmarks that kill agents);
        # {}: the platform's own defaults.
        self.server_timings = dict(SERVER_TIMINGS if server_timings is None else server_timings)
        self.db_name = db_name
        self.dir = var_dir / subdir
        self.log_dir = self.dir / "logs"
        self.shared_redis = shared_redis
        self.say = say
        self.base_url = ""
        self.server_url = ""
        self.database_url = ""
        self.redis_url = ""
        self.redis_pidfile: Path | None = None
        self.servers: list[Proc] = []
        self.agents: dict[str, Proc] = {}

    # --- before django.setup() ---------------------------------------------------------------

    def bootstrap_env(self) -> None:
        """A fresh database (`iac_bench`); a Redis of our own; export both for django.setup()."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.log_dir.glob("*.log"):
            old.unlink()
        server_url = os.environ.get("DATABASE_URL") or embedded.ensure_postgres(self.var_dir)
        self.say(f"==> database {self.db_name}: dropping and creating it on {urlsplit(server_url).query or server_url}")
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.server_url = server_url  # the server's maintenance database (for ALTER DATABASE etc.)
        self.database_url = _with_dbname(server_url, self.db_name)

        if self.shared_redis:
            self.redis_url = os.environ.get("REDIS_URL") or "unix://" + str(embedded.ensure_redis(self.var_dir))
        else:
            # A Redis of our own: the Celery queue, wake-up channels and channel groups of a
            # test run sharing the machine must not mix with ours (same ids in another DB).
            sock = embedded.ensure_redis(self.dir)
            self.redis_pidfile = self.dir / "redis" / "redis.pid"
            self.redis_url = "unix://" + str(sock)
        self.say(f"==> redis: {self.redis_url}")

        os.environ["DATABASE_URL"] = self.database_url
        os.environ["REDIS_URL"] = self.redis_url
        os.environ["IAC_VAR_DIR"] = str(self.var_dir)
        os.environ.update(self.server_timings)
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iacplatform.settings")

    # --- servers -----------------------------------------------------------------------------

    def setup_django(self) -> None:
        """bootstrap_env(), then django.setup() on the benchmark's database and Redis."""
        self.bootstrap_env()
        django.setup()

    def serve(self) -> str:
        """Migrate the fresh database and start the servers; returns the base URL."""
        self.migrate()
        return self.start_servers()

    def server_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=settings.REDIS_URL,
            SECRET_KEY=settings.SECRET_KEY,
            IAC_VAR_DIR=str(self.var_dir),
            IAC_PUBLIC_URL=self.base_url,
            PYTHONUNBUFFERED="1",
            **self.server_timings,
        )
        return env

    def migrate(self) -> None:
        self.say(f"==> manage.py migrate ({self.db_name})")
        env = dict(os.environ, DATABASE_URL=self.database_url)
        out = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise RuntimeError(f"migrate failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")

    def start_servers(self) -> str:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        env = self.server_env()
        self.say(f"==> starting daphne on {self.base_url} and a celery worker with beat (logs: {self.log_dir})")
        web = Proc(
            "daphne",
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "iacplatform.asgi:application"],
            env,
            self.log_dir / "daphne.log",
        )
        self.servers.append(web)
        schedule = self.dir / "celerybeat-schedule"
        for stale in self.dir.glob("celerybeat-schedule*"):
            stale.unlink()
        worker = Proc(
            "celery",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "iacplatform",
                "worker",
                "-B",
                "--pool",
                "threads",
                "-c",
                "4",
                "-l",
                "info",
                "-s",
                str(schedule),
            ],
            env,
            self.log_dir / "celery.log",
        )
        self.servers.append(worker)

        def web_up() -> bool:
            if not web.alive():
                raise RuntimeError(f"daphne exited; see {web.log_path}")
            try:
                return requests.get(self.base_url + "/accounts/login/", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_for(web_up, 60, "daphne to serve", interval=0.2)

        def worker_up() -> bool:
            if not worker.alive():
                raise RuntimeError(f"the celery worker exited; see {worker.log_path}")
            return b" ready." in worker.log_path.read_bytes()

        wait_for(worker_up, 60, "the celery worker to be ready", interval=0.2)
        return self.base_url

    # --- agents ------------------------------------------------------------------------------

    def start_agent(
        self, pool_token: str, name: str, *, env: dict[str, str], slots: int = 3, wait: bool = True
    ) -> Proc:
        from agents_app.models import Agent

        work_root = self.dir / "agents" / name
        cmd = [
            sys.executable,
            "-m",
            "agents_app.agent",
            "--server",
            self.base_url,
            "--name",
            name,
            "--work-root",
            str(work_root),
            "--slots",
            str(slots),
        ]
        # As the platform starts agents: an allowlist of this environment (not the database's
        # and Redis' URLs), the pool token in the environment (not on the command line, which
        # ps shows). The sandbox lets terraform write the benchmarks' marker files and the
        # dispatch benchmark's terraform wrapper log, and run the real terraform that wrapper
        # calls; nothing else of var/.
        markers, tools = self.dir / "markers", self.dir / "terraform"
        markers.mkdir(parents=True, exist_ok=True)
        agent_env = agent_environment(
            PYTHONUNBUFFERED="1",
            IAC_POOL_TOKEN=pool_token,
            IAC_AGENT_SANDBOX_BIND_RW=os.pathsep.join(str(p) for p in (markers, tools)),
            IAC_AGENT_SANDBOX_BIND=os.pathsep.join(str(p) for p in executable_paths(resolve_terraform(self.var_dir))),
        )
        agent_env.update(env)
        proc = Proc(f"agent-{name}", cmd, agent_env, self.log_dir / f"agent-{name}.log")
        self.agents[name] = proc
        if wait:

            def registered() -> bool:
                if not proc.alive():
                    raise RuntimeError(f"agent {name} exited; see {proc.log_path}")
                return Agent.objects.filter(name=name, status="online").exists()

            wait_for(registered, 30, f"agent {name} to register")
        return proc

    def kill_agent(self, name: str) -> None:
        self.agents[name].kill()

    # --- teardown ----------------------------------------------------------------------------

    def stop(self) -> None:
        for proc in list(self.agents.values()):
            if proc.alive():
                proc.stop(timeout=5)
        for proc in reversed(self.servers):
            proc.stop()
        if self.redis_pidfile is not None and self.redis_pidfile.exists():
            try:
                os.kill(int(self.redis_pidfile.read_text().strip()), signal.SIGTERM)
            except (ValueError, ProcessLookupError):
                pass


def bench_platform(*, db_name: str = BENCH_DB, subdir: str = "bench", say: Callable[[str], None] = say,
                   server_timings: dict[str, str] | None = None, shared_redis: bool = False) -> BenchPlatform:
    """The platform a benchmark brings up (under $IAC_VAR_DIR or var/), with SIGTERM turned
    into KeyboardInterrupt so the benchmark's cleanup stops everything it started, and Ctrl-C
    stopping it also when started from a shell that ignores SIGINT for it.
    `server_timings`: as BenchPlatform's (None: the short control loops; {}: the defaults)."""
    var_dir = Path(os.environ.get("IAC_VAR_DIR") or ROOT / "var").resolve()
    signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(KeyboardInterrupt(f"signal {signum}")))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return BenchPlatform(var_dir=var_dir, say=say, db_name=db_name, subdir=subdir, server_timings=server_timings,
                         shared_redis=shared_redis)


def bench_admin() -> tuple[Any, str]:
    """The benchmark's superuser ("bench") and an API token of theirs. After django.setup()."""
    from django.contrib.auth.models import User

    from tasks_app.services.tokens import token_create

    user = User.objects.create_superuser("bench", password="bench-password-1")
    return user, token_create(user=user, name="bench")[1]


class PlatformRun:
    """The body of a benchmark, with the platform stopped however it ends:

        with PlatformRun(live) as run:
            ...  # bring the platform up, measure
        if run.failure is not None:
            return run.exit_code()

    An error or Ctrl-C (SIGTERM) in the body is kept in `failure`, not raised: the platform
    is stopped first (after the callbacks given to `on_stop`, e.g. the benchmark's own
    threads), then `exit_code()` reports it."""

    def __init__(self, live: BenchPlatform, stopping: str = "==> stopping the platform") -> None:
        self.live = live
        self.stopping = stopping
        self.failure: BaseException | None = None
        self._on_stop: list[Callable[[], object]] = []

    def on_stop(self, callback: Callable[[], object]) -> None:
        self._on_stop.append(callback)

    def __enter__(self) -> PlatformRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if isinstance(exc, KeyboardInterrupt):
            self.live.say(f"\ninterrupted ({str(exc) or 'Ctrl-C'}): stopping the platform")
        try:
            for callback in self._on_stop:
                callback()
        finally:
            self.live.say(self.stopping)
            self.live.stop()
        if isinstance(exc, KeyboardInterrupt | Exception):
            self.failure = exc
            return True
        return False

    def exit_code(self) -> int:
        assert self.failure is not None
        return failure_exit_code(self.failure, self.live.log_dir)


def write_results(name: str, data: Any, *, indent: int = 2) -> Path:
    """bench/results/<name>.json; returns its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=indent, default=str))
    return path


def say_markdown(markdown: str) -> None:
    """The Markdown copy of a benchmark's table, after its text table."""
    say("")
    say("Markdown:")
    say("")
    say(markdown)
    say("")


def failure_exit_code(failure: BaseException, log_dir: Path) -> int:
    """Report why a benchmark stopped (the platform is already stopped) and its exit code:
    130 for Ctrl-C or SIGTERM, 1 for an error, with the traceback and where the logs are."""
    if isinstance(failure, KeyboardInterrupt):
        return 130
    traceback.print_exception(failure)
    print(f"FAILED: {failure.__class__.__name__}; server and agent logs: {log_dir}", flush=True)
    return 1
