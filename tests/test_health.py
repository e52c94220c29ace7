"""Health endpoints: /healthz/live and /healthz/ready on the server, and the agent's own.

The outage tests run a Daphne of their own on a PostgreSQL (pgserver, in a temp dir) and a
redis-server of their own, and stop them: the suite's shared servers are never touched.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pgserver
import pytest
import requests
from asgiref.testing import ApplicationCommunicator
from django.utils import timezone

from agents_app.agent.health import start_health_server
from iacplatform import embedded
from tests.live import LOG_DIR, ROOT, free_port, wait_for

FOREIGN_HOST = "10.244.1.17:8000"  # a pod IP, as a kubelet's probe sends it


# --- live, in process ---------------------------------------------------------------------


async def _asgi_get(path: str, host: str) -> tuple[int, bytes]:
    from iacplatform.asgi import application

    comm = ApplicationCommunicator(application, {
        "type": "http", "method": "GET", "path": path, "query_string": b"",
        "headers": [(b"host", host.encode())], "scheme": "http", "server": ("10.244.1.17", 8000),
    })
    await comm.send_input({"type": "http.request", "body": b""})
    start = await comm.receive_output(10)
    body = await comm.receive_output(10)
    return start["status"], body.get("body", b"")


def test_it_answers_live_whatever_the_host_header():
    status, raw = asyncio.run(_asgi_get("/healthz/live", FOREIGN_HOST))
    body = json.loads(raw)
    assert status == 200
    assert body["status"] == "ok"
    assert body["checks"]["process"]["status"] == "ok"


def test_it_computes_ready_once_for_many_callers(transactional_db):
    # Anyone may call ready: fifty callers at once cost one computation (one set of checks,
    # each with its own timing), which every one of them gets.
    async def many() -> list[tuple[int, bytes]]:
        return await asyncio.gather(*(_asgi_get("/healthz/ready", FOREIGN_HOST) for _ in range(50)))

    answers = asyncio.run(many())
    assert {status for status, _ in answers} <= {200, 503}
    assert len({raw for _, raw in answers}) == 1, "ready was computed more than once"
    assert json.loads(answers[0][1])["checks"]["database"]["status"] == "ok"


def test_it_still_refuses_a_foreign_host_on_other_pages():
    status, _ = asyncio.run(_asgi_get("/accounts/login/", FOREIGN_HOST))
    assert status == 400


def test_it_is_ready_once_a_sweep_has_completed(transactional_db):
    # Threads of their own run the checks: they see committed rows only (hence transactional_db).
    # (A session-wide e2e worker may be sweeping this database too, so the "no sweep yet" and
    # "late" verdicts are checked on the decision itself, below.)
    from iacplatform.health import readiness
    from tasks_app.models import SweepHeartbeat
    from tasks_app.services.sweep import sweep

    before = timezone.now()
    # That worker's sweep holds the sweep lock for a moment: this one is then skipped, and
    # runs again until it gets the lock.
    deadline = time.monotonic() + 30
    while sweep(steps=[]).get("skipped") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert SweepHeartbeat.objects.get(id=1).finished_at >= before
    status, body = asyncio.run(readiness())
    assert (status, body["status"]) == (200, "ok"), body
    assert body["checks"]["sweep"]["last_sweep_at"]


def test_it_calls_a_missing_or_late_sweep_degraded():
    from iacplatform.health import sweep_late_after, sweep_problem

    now = timezone.now()
    assert "no sweep has completed yet" in sweep_problem(None, now)
    late = now - datetime.timedelta(seconds=sweep_late_after() + 5)
    assert "are the Celery worker and beat running" in sweep_problem(late, now)
    assert sweep_problem(now - datetime.timedelta(seconds=2), now) == ""


# --- ready, against a platform of the test's own ------------------------------------------


@dataclass
class OwnPostgres:
    """A PostgreSQL of the module's own (pgserver, in a temp dir), shared by its tests: a test
    may stop it (own_servers starts it again after), and a migrated database is made once (or
    taken from the test that migrates one) and copied (CREATE DATABASE ... TEMPLATE) for each
    test that needs one."""

    root: Path
    pg: pgserver.PostgresServer | None = None
    template: str = ""  # a migrated database no one is connected to
    suite_database: dict = field(default_factory=dict)  # the suite's (migrated) test database

    def server(self) -> pgserver.PostgresServer:
        if self.pg is None:
            self.pg = pgserver.get_server(self.root / "pg", cleanup_mode="stop")
        return self.pg

    def stop(self) -> None:
        if self.pg is not None:
            self.pg.cleanup()  # pg_ctl -w stop (cleanup_mode="stop"); the data dir stays
            self.pg = None


@dataclass
class OwnServers:
    root: Path
    postgres: OwnPostgres
    redis_dir: Path
    redis_socket: Path

    def database_url(self, name: str) -> str:
        """An empty database: no migration applied."""
        pg = self.postgres.server()
        pg.psql(f"CREATE DATABASE {name};")
        return pg.get_uri(name)

    def migrated_database_url(self, name: str) -> str:
        """A database with every migration applied: the suite's test database's schema and
        its record of applied migrations, copied (`manage.py migrate` if that fails), once per
        module."""
        pg = self.postgres.server()
        if not self.postgres.template:
            pg.psql("CREATE DATABASE migrated;")
            if not _copy_schema(self.postgres.suite_database, pg.get_uri("migrated")):
                _manage(_env(self, pg.get_uri("migrated"), free_port()), "migrate", "--no-input")
            self.postgres.template = "migrated"
        pg.psql(f"CREATE DATABASE {name} TEMPLATE {self.postgres.template};")
        return pg.get_uri(name)

    def stop_redis(self) -> None:
        pid = int((self.redis_dir / "redis.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not embedded._redis_alive(self.redis_socket), 10, "redis to stop")

    def stop_postgres(self) -> None:
        self.postgres.stop()


def _own_root(prefix: str) -> Path:
    # Not pytest's tmp_path: pgserver runs PostgreSQL as its own user when we are root, and
    # that user must be able to enter the directory.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root


def _copy_schema(suite: dict, url: str) -> bool:
    """The suite's test database's schema and django_migrations rows into `url`'s database
    (pg_dump, a second instead of a migrate's ten): the readiness checks read nothing else
    a migrate writes. False when it cannot be had (no test database in this session, a
    server pg_dump cannot read)."""
    if not suite:
        return False
    bin_dir = pgserver.postgres_server.POSTGRES_BIN_PATH
    env = dict(os.environ, PGPASSWORD=suite.get("PASSWORD") or "")
    target = [f"--host={suite.get('HOST') or ''}", f"--port={suite.get('PORT') or 5432}",
              f"--username={suite.get('USER') or 'postgres'}", suite["NAME"]]
    try:
        schema = subprocess.run([bin_dir / "pg_dump", "--schema-only", "--no-owner", "--no-privileges", *target],
                                env=env, check=True, capture_output=True).stdout
        applied = subprocess.run([bin_dir / "pg_dump", "--data-only", "--table=django_migrations", *target],
                                 env=env, check=True, capture_output=True).stdout
        subprocess.run([bin_dir / "psql", "--quiet", "--set=ON_ERROR_STOP=1", url], input=schema + applied,
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


@pytest.fixture(scope="module")
def own_postgres(django_db_setup) -> Iterator[OwnPostgres]:
    from django.db import connection
    from django.db.backends.base.creation import TEST_DATABASE_PREFIX

    # The test database exists only when a test of the session uses the database.
    suite = dict(connection.settings_dict)
    if not (suite["NAME"] == (suite.get("TEST") or {}).get("NAME") or suite["NAME"].startswith(TEST_DATABASE_PREFIX)):
        suite = {}
    postgres = OwnPostgres(root=_own_root("iac-health-pg-"), suite_database=suite)
    try:
        yield postgres
    finally:
        postgres.stop()
        shutil.rmtree(postgres.root, ignore_errors=True)


@pytest.fixture
def own_servers(own_postgres) -> Iterator[OwnServers]:
    root = _own_root("iac-health-")
    own_postgres.server()  # running again if the test before stopped it
    redis_socket = embedded.ensure_redis(root)
    servers = OwnServers(root=root, postgres=own_postgres, redis_dir=root / "redis", redis_socket=redis_socket)
    try:
        yield servers
    finally:
        if embedded._redis_alive(redis_socket):
            servers.stop_redis()
        shutil.rmtree(root, ignore_errors=True)


def _env(servers: OwnServers, database_url: str, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=f"unix://{servers.redis_socket}",
        SECRET_KEY="health-test-secret-key-" + "x" * 40,
        IAC_VAR_DIR=str(servers.root / "var"),
        IAC_PUBLIC_URL=f"http://127.0.0.1:{port}",
        PYTHONUNBUFFERED="1",
    )
    return env


def _manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True)


@contextmanager
def _daphne(env: dict[str, str], port: int) -> Iterator[str]:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOG_DIR / "daphne-health.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "iacplatform.asgi:application"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"daphne exited; see {LOG_DIR / 'daphne-health.log'}")
            try:
                return requests.get(base + "/healthz/live", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_for(up, 60, "daphne to serve")
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _ready(base: str) -> tuple[int, dict]:
    # The pod IP as Host: the probe's view, not a browser's.
    response = requests.get(base + "/healthz/ready", headers={"Host": FOREIGN_HOST}, timeout=30)
    assert response.headers["Content-Type"] == "application/json"
    return response.status_code, response.json()


def _ready_once(base: str, reached, what: str) -> tuple[int, dict]:
    """Ready's answer once `reached(status, body)`: an answer is kept for a second, so a
    change shows in the next one computed."""
    seen: list[tuple[int, dict]] = []

    def check() -> bool:
        seen.append(_ready(base))
        return reached(*seen[-1])

    wait_for(check, 30, what)
    return seen[-1]


@pytest.mark.e2e
@pytest.mark.longest
def test_it_reports_missing_migrations_on_a_fresh_database(own_servers):
    port = free_port()
    env = _env(own_servers, own_servers.database_url("fresh"), port)
    with _daphne(env, port) as base:
        status, body = _ready(base)
        assert status == 503
        assert body["status"] == "down"
        assert body["checks"]["database"]["status"] == "ok"
        assert body["checks"]["migrations"]["status"] == "down"
        assert "not applied" in body["checks"]["migrations"]["error"]
        assert all(isinstance(check["ms"], float) for check in body["checks"].values())
        # Missing migrations are looked for again on every answer computed, until applied.
        _manage(env, "migrate", "--no-input")
        _, body = _ready_once(base, lambda s, b: b["checks"]["migrations"]["status"] == "ok", "migrations applied")
        assert "error" not in body["checks"]["migrations"]
    # Daphne gone, nothing uses the database: the module's other tests copy it, not migrate again.
    own_servers.postgres.template = own_servers.postgres.template or "fresh"


@pytest.mark.e2e
@pytest.mark.longest
def test_it_turns_degraded_without_redis_and_fails_without_postgresql(own_servers):
    port = free_port()
    env = _env(own_servers, own_servers.migrated_database_url("platform"), port)
    # One control-loop tick, as the Celery worker runs it: the sweep's time is recorded.
    _manage(env, "shell", "-c", "from tasks_app.services.sweep import sweep; sweep()")
    with _daphne(env, port) as base:
        status, body = _ready(base)
        assert (status, body["status"]) == (200, "ok"), body
        assert {name: c["status"] for name, c in body["checks"].items()} == {
            "database": "ok", "redis": "ok", "migrations": "ok", "sweep": "ok"}
        assert body["checks"]["sweep"]["last_sweep_at"]

        own_servers.stop_redis()
        status, body = _ready_once(base, lambda s, b: b["checks"]["redis"]["status"] != "ok", "Redis down")
        assert (status, body["status"]) == (200, "degraded"), body
        assert body["checks"]["redis"]["status"] == "degraded"
        assert body["checks"]["database"]["status"] == "ok"

        own_servers.stop_postgres()
        status, body = _ready_once(base, lambda s, b: b["checks"]["database"]["status"] != "ok", "PostgreSQL down")
        assert (status, body["status"]) == (503, "down"), body
        assert body["checks"]["database"]["status"] == "down"
        assert body["checks"]["database"]["error"]


@pytest.mark.e2e
@pytest.mark.longest
def test_it_reports_a_late_sweep_as_degraded(own_servers):
    port = free_port()
    # Migrated, but no sweep ever ran: no worker, no beat.
    env = _env(own_servers, own_servers.migrated_database_url("nosweep"), port)
    with _daphne(env, port) as base:
        status, body = _ready(base)
    assert (status, body["status"]) == (200, "degraded"), body
    assert body["checks"]["sweep"]["status"] == "degraded"
    assert "Celery" in body["checks"]["sweep"]["error"]


# --- the agent's own endpoints ------------------------------------------------------------


@dataclass
class FakeAgent:
    agent_id: int = 0
    heartbeat_interval: float = 10.0
    last_answered: float = 0.0
    last_server_error: str = ""


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_it_serves_the_agent_health_on_a_local_port():
    agent = FakeAgent(last_server_error="server not reachable: connection refused")
    server = start_health_server(agent, "127.0.0.1", 0)
    base = "http://127.0.0.1:%d" % server.server_address[1]
    try:
        assert _get(base + "/healthz/live") == (200, {"status": "ok", "checks": {"process": {"status": "ok", "ms": 0.0}}})

        status, body = _get(base + "/healthz/ready")
        assert (status, body["status"]) == (503, "down")
        assert body["checks"]["registered"]["status"] == "down"
        assert "connection refused" in body["checks"]["server"]["error"]

        # Registered and the last heartbeat just answered.
        agent.agent_id, agent.last_answered, agent.last_server_error = 7, time.monotonic(), ""
        status, body = _get(base + "/healthz/ready")
        assert (status, body["status"]) == (200, "ok")
        assert body["checks"]["registered"]["agent_id"] == 7

        # Heartbeats stopped being answered long ago.
        agent.last_answered = time.monotonic() - 3600
        status, body = _get(base + "/healthz/ready")
        assert (status, body["checks"]["heartbeat"]["status"]) == (503, "down")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_it_serves_a_running_agents_health_once_registered(live_url, start_agent):
    from tests.factories import make_pool

    _pool, token = make_pool()
    port = free_port()
    start_agent(token, "health-probed", env={"IAC_AGENT_HEALTH_PORT": str(port)})  # returns once the server has it
    # The server records the agent a moment before the agent process reads the answer.
    deadline = time.monotonic() + 10
    while (probe := _get(f"http://127.0.0.1:{port}/healthz/ready"))[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    status, body = probe
    assert (status, body["status"]) == (200, "ok"), body
    assert body["checks"]["registered"]["agent_id"]
    # And the platform it registered with is ready too (its Celery worker sweeps).
    status, body = _ready(live_url)
    assert status == 200
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["migrations"]["status"] == "ok"
