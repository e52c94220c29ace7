"""`manage.py up`: the whole platform on one machine, in the foreground, under supervisord.

Writes `<var>/supervisor/supervisord.conf` and runs `supervisord -n` as its child. supervisord
first runs the embedded PostgreSQL and Redis (when DATABASE_URL / REDIS_URL are unset); then
this command migrates and bootstraps the demo, and has supervisord start Daphne (web), a
Celery worker and Celery beat; the autoscaler (a beat task) starts the local pool's agents as
pods of the `local` backend (agents_app/pods/local.py). supervisord restarts whatever
dies (with back-off) and logs it, on this console and in `<var>/logs/supervisord.log`.
Ctrl-C (or SIGTERM) stops everything, the local pool's agents, the database and Redis included.

Programs: postgres, redis, web, worker, beat (the agents are pods: `var/pods/<database>/<pod>.json` holds
each one's pid, `/api/v1/pools/<id>/pods/` lists them). Control the programs with
`python -m supervisor.supervisorctl -c <var>/supervisor/supervisord.conf status|stop|start|pid <name>`.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

import requests
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connections
from supervisor.xmlrpc import SupervisorTransport

from agents_app.agent.sandbox import agent_environment
from agents_app.pods.local import pods_dir, stop_all
from iacplatform import embedded
from tasks_app.tfe.cli_config import cli_config, cli_hostname

# A program that dies within `startsecs` of its start counts as a failed start: supervisord
# retries it after 1 s, 2 s, 3 s ... (`startretries` times), then marks it FATAL. This
# command then tries a FATAL program again every FATAL_RETRY_SECONDS (and says so).
FATAL_RETRY_SECONDS = 30.0
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Interrupted(Exception):
    pass


@dataclass
class Program:
    name: str
    command: list[str]
    priority: int
    environment: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    startsecs: int = 3
    startretries: int = 10
    stopsignal: str = "TERM"
    stopwaitsecs: int = 20
    stopasgroup: bool = True
    killasgroup: bool = True

    def section(self, var: Path, directory: Path) -> str:
        lines = [
            f"[program:{self.name}]",
            f"command={_conf(shlex.join(self.command))}",
            f"directory={_conf(str(directory))}",
            f"priority={self.priority}",
            "autostart=true",
            "autorestart=true",
            f"startsecs={min(self.startsecs, settings.IAC_UP_START_SECONDS)}",
            f"startretries={self.startretries}",
            f"stopsignal={self.stopsignal}",
            f"stopwaitsecs={self.stopwaitsecs}",
            f"stopasgroup={str(self.stopasgroup).lower()}",
            f"killasgroup={str(self.killasgroup).lower()}",
            "redirect_stderr=true",
            f"stdout_logfile={_conf(str(var / 'logs' / f'{self.name}.log'))}",
            "stdout_logfile_maxbytes=50MB",
            "stdout_logfile_backups=3",
        ]
        if self.user:
            lines.append(f"user={self.user}")
        if self.environment:
            lines.append(f"environment={environment_line(self.environment)}")
        return "\n".join(lines) + "\n"


def _conf(value: str) -> str:
    """supervisord expands %(name)s in its values: a literal % is written %%."""
    return value.replace("%", "%%")


def _representable(name: str, value: str) -> bool:
    """What supervisord's `environment=` (KEY="value",... read by a non-POSIX shlex, quotes
    stripped from both ends) can carry unchanged."""
    if not _NAME.fullmatch(name) or "\n" in value or "\r" in value or "\0" in value:
        return False
    if value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
        return False
    return '"' not in value or "'" not in value


def environment_line(env: dict[str, str]) -> str:
    parts = []
    for name, value in sorted(env.items()):
        quote = "'" if '"' in value else '"'
        parts.append(f"{name}={quote}{_conf(value)}{quote}")
    return ",".join(parts)


def _die_with_parent() -> None:
    """In the supervisord child, before exec: SIGTERM it if this command dies (even by
    SIGKILL), so it stops its programs instead of leaving them behind (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Command(BaseCommand):
    help = "Run the embedded PostgreSQL and Redis, web, worker, beat and the local pool's agents under supervisord (Ctrl-C stops all)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=os.environ.get("IAC_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("IAC_PORT", "8000")))

    def step(self, text: str) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"==> {text}"))

    # --- the supervisor ------------------------------------------------------------------------

    def _paths(self) -> None:
        var = settings.VAR_DIR
        self.var = var
        self.logs = var / "logs"
        self.sup_dir = var / "supervisor"
        self.conf = self.sup_dir / "supervisord.conf"
        self.sock = self.sup_dir / "supervisor.sock"
        python = os.path.relpath(sys.executable)  # .venv/bin/python from the checkout
        self.ctl = f"{python if not python.startswith('..') else sys.executable} -m supervisor.supervisorctl -c {self.conf}"
        self.rpc_user, self.rpc_password = "up", secrets.token_hex(16)

    def _write_config(self, programs: list[Program]) -> None:
        root = "user=root\n" if os.geteuid() == 0 else ""  # as root, say so (else a CRIT line)
        text = (
            "; Written by `manage.py up` at each start; edits are lost.\n"
            "[unix_http_server]\n"
            f"file={_conf(str(self.sock))}\n"
            "chmod=0700\n"
            # The socket is the owner's only; the credentials (which supervisorctl -c reads
            # below) are a second lock on the door that starts and stops everything.
            f"username={self.rpc_user}\n"
            f"password={self.rpc_password}\n\n"
            "[supervisord]\n"
            f"logfile={_conf(str(self.logs / 'supervisord.log'))}\n"
            "logfile_maxbytes=10MB\n"
            "logfile_backups=3\n"
            "loglevel=info\n"
            f"pidfile={_conf(str(self.sup_dir / 'supervisord.pid'))}\n"
            f"childlogdir={_conf(str(self.logs))}\n"
            f"directory={_conf(str(settings.BASE_DIR))}\n"
            "nodaemon=true\n"
            f"{root}\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            "[supervisorctl]\n"
            f"serverurl=unix://{_conf(str(self.sock))}\n"
            f"username={self.rpc_user}\n"
            f"password={self.rpc_password}\n\n"
        )
        text += "\n".join(p.section(self.var, settings.BASE_DIR) for p in programs)
        tmp = self.conf.with_suffix(".tmp")
        # It holds the servers' environment (and the pool token): the owner only.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        tmp.replace(self.conf)

    def _rpc(self):
        transport = SupervisorTransport(self.rpc_user, self.rpc_password, f"unix://{self.sock}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def _states(self) -> dict[str, dict]:
        return {p["name"]: p for p in self._rpc().supervisor.getAllProcessInfo()}

    def _wait(self, what: str, ready, timeout: float, programs: list[str]) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.supervisord.poll() is not None:
                raise CommandError(f"supervisord exited while waiting for {what}; see {self.logs / 'supervisord.log'}")
            try:
                if ready():
                    return
            except (OSError, xmlrpc.client.Error, requests.RequestException, embedded.EmbeddedServerUnavailable):
                pass
            try:
                states = self._states()
            except (OSError, xmlrpc.client.Error):
                states = {}
            for name in programs:
                if states.get(name, {}).get("statename") == "FATAL":
                    raise CommandError(f"{name} could not be started; see {self.logs / f'{name}.log'}")
            if time.monotonic() > deadline:
                raise CommandError(f"{what} did not come up within {timeout:g}s; see {self.logs}/")
            time.sleep(0.2)

    def _start_supervisord(self, programs: list[Program], env: dict[str, str]) -> None:
        self.sup_dir.mkdir(parents=True, exist_ok=True)
        self.sup_dir.chmod(0o700)
        self.logs.mkdir(parents=True, exist_ok=True)
        self._write_config(programs)
        self.sock.unlink(missing_ok=True)  # a stale socket of a supervisord that was killed
        # Its output (its own log lines: spawned, exited, gave up) reaches this console.
        self.supervisord = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(self.conf)],
            env=env, cwd=settings.BASE_DIR, start_new_session=True, preexec_fn=_die_with_parent,
        )
        self._wait("supervisord", lambda: self._rpc().supervisor.getState()["statename"] == "RUNNING", 30, [])

    def _add(self, names: list[str]) -> None:
        """Start the programs that the rewritten config added, in this order."""
        rpc = self._rpc()
        added, _changed, _removed = rpc.supervisor.reloadConfig()[0]
        for name in names:
            if name in added:
                rpc.supervisor.addProcessGroup(name)

    # --- the command ---------------------------------------------------------------------------

    def handle(self, *args, host: str, port: int, **options) -> None:
        self._paths()
        self.supervisord: subprocess.Popen | None = None
        self.known_pids: dict[str, int] = {}

        def on_signal(signum, frame) -> None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise Interrupted(signal.Signals(signum).name)

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            users = self._hold_var_dir()
        except Interrupted:
            return  # nothing started yet
        try:
            self._run(host, port)
        except Interrupted:
            pass
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.step("stopping")
            self._stop()
            users.close()
            self.stdout.write("    stopped")

    def _hold_var_dir(self):
        """This var dir's embedded servers are ours now: refuse while another `manage.py up`
        or a test session uses them; stop any that another process started."""
        users = open(self.var / embedded.USERS_LOCK, "a")
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            users.close()
            raise CommandError(
                f"{self.var} is in use by another `manage.py up` or a test session ({self.var / embedded.USERS_LOCK}); "
                "wait for it to end, or give this one its own IAC_VAR_DIR"
            ) from None
        for name in stop_all(self.var, grace=10):
            self.stderr.write(f"    agent {name} was still running: stopped")
        if not os.environ.get("DATABASE_URL") and embedded.stop_postgres(self.var):
            self.stdout.write(f"    stopped the embedded PostgreSQL of {self.var / 'pg'} started outside `manage.py up`")
        if not os.environ.get("REDIS_URL") and embedded.stop_redis(self.var):
            self.stdout.write(f"    stopped the embedded redis-server of {self.var / 'redis'} started outside `manage.py up`")
        fcntl.flock(users, fcntl.LOCK_SH)  # others may share them now (a test session, manage.py shell)
        return users

    def _run(self, host: str, port: int) -> None:
        url = f"http://{host}:{port}"
        var, logs = self.var, self.logs
        py = sys.executable
        # Agents here run beside web: they (and terraform's state backend calls) use the local
        # URL unless IAC_AGENT_URL says otherwise; browsers use IAC_PUBLIC_URL.
        env = dict(os.environ, IAC_PUBLIC_URL=os.environ.get("IAC_PUBLIC_URL", url),
                   IAC_AGENT_URL=os.environ.get("IAC_AGENT_URL", url), PYTHONUNBUFFERED="1")
        # supervisord itself gets the agents' allowlist only (supervisor cannot take variables
        # away from a child, only add them); the servers get the rest through `environment=`.
        base_env = agent_environment(env)
        server_env = {k: v for k, v in env.items() if base_env.get(k) != v}
        server_env[embedded.SUPERVISED_ENV] = "1"
        dropped = sorted(k for k, v in server_env.items() if not _representable(k, v))
        if dropped:
            self.stderr.write(f"    not passed to the servers (supervisord cannot carry their values): {', '.join(dropped)}")
        server_env = {k: v for k, v in server_env.items() if k not in dropped}

        servers: list[Program] = []
        if not os.environ.get("DATABASE_URL"):
            command, user = embedded.postgres_program(var)
            # SIGINT: PostgreSQL's fast shutdown (clients disconnected, nothing lost). Its
            # backends are its children: the postmaster stops them, the group is SIGKILLed
            # only if it does not stop in time.
            servers.append(Program("postgres", command, 10, environment=server_env, user=user, startsecs=2,
                                   stopsignal="INT", stopwaitsecs=30, stopasgroup=False, killasgroup=True))
        if not os.environ.get("REDIS_URL"):
            (var / "redis").mkdir(parents=True, exist_ok=True)
            servers.append(Program("redis", embedded.redis_command(var, daemonize=False), 10,
                                   environment=server_env, startsecs=1, stopwaitsecs=10))
        self.step(f"starting supervisord ({self.conf}; its log: {logs / 'supervisord.log'})")
        self._start_supervisord(servers, base_env)
        if servers:
            self.step(f"waiting for {' and '.join(p.name for p in servers)}")
            if not os.environ.get("DATABASE_URL"):
                self._wait("PostgreSQL", lambda: embedded.wait_for_postgres(var, 0), 60, ["postgres"])
            if not os.environ.get("REDIS_URL"):
                self._wait("Redis", lambda: embedded.redis_running(var), 30, ["redis"])

        self.step("migrating the database")
        call_command("migrate", interactive=False, verbosity=0)
        self.step("creating the admin user, the local pool and the demo workspace")
        out = StringIO()
        call_command("bootstrap_demo", stdout=out)
        boot = json.loads(out.getvalue().strip().splitlines()[-1])
        # This process keeps no database connection: PostgreSQL may restart under it.
        connections.close_all()
        if hasattr(connections["default"], "close_pool"):
            connections["default"].close_pool()

        web = Program("web", [py, "-m", "daphne", "-b", host, "-p", str(port), "iacplatform.asgi:application"], 20,
                      environment=server_env, startsecs=3, stopwaitsecs=15)
        # Warm shutdown: the worker finishes the sweep it runs.
        worker = Program("worker", [py, "-m", "celery", "-A", "iacplatform", "worker", "--pool", "threads", "-c", "4",
                                    "-l", "info"], 20, environment=server_env, startsecs=3, stopwaitsecs=30)
        beat = Program("beat", [py, "-m", "celery", "-A", "iacplatform", "beat", "-l", "info",
                                "-s", str(var / "celerybeat-schedule")], 20, environment=server_env, startsecs=3,
                       stopwaitsecs=15)
        # The local pool's agents are pods of its `local` backend (agents_app/pods/local.py):
        # the autoscaler (a beat task, run by the worker) starts them, at least min_replicas,
        # detached from the worker, each with an allowlist of the worker's environment (never
        # the server's secrets), the pool token in IAC_POOL_TOKEN and its work root outside
        # var/. The demo's apply appends to var/demo/applied.log: the sandbox lets the agents
        # write there, and nowhere else of var/.
        demo_dir = var / "demo"
        demo_dir.mkdir(parents=True, exist_ok=True)
        writable = os.pathsep.join(p for p in (env.get("IAC_AGENT_SANDBOX_BIND_RW", ""), str(demo_dir)) if p)
        worker.environment = dict(server_env, IAC_AGENT_SANDBOX_BIND_RW=writable)
        self._write_config(servers + [web, worker, beat])
        self.step("starting web, worker and beat")
        self._add(["web", "worker", "beat"])
        for name in ("web", "worker", "beat"):
            self.stdout.write(f"    {name} (log: {logs / f'{name}.log'})")
        self.step("waiting for the web server")
        self._wait("web", lambda: requests.get(url + "/accounts/login/", timeout=1).status_code == 200, 60, ["web"])
        names = [p.name for p in servers + [web, worker, beat]]
        self._wait("the servers", lambda: all(self._states()[n]["statename"] == "RUNNING" for n in names), 60, names)
        self.step(f"the autoscaler starts pool '{boot['pool']}' ({boot['agents']} agent(s) at least; their logs: "
                  f"{pods_dir(var)}/<pod>.log)")

        tfrc = self._write_terraform_config(url, boot["api_token"])
        self.stdout.write(self.style.SUCCESS(
            f"\n  login:      {boot['username']} / {boot['password']}\n"
            f"  API token:  {boot['api_token']}   (Authorization: Token <token>)\n"
            f"  terraform:  export TF_CLI_CONFIG_FILE={tfrc}   then a cloud {{}} block with hostname = "
            f"\"{cli_hostname(url)}\", organization = \"{settings.IAC_ORGANIZATION}\" (README: From the terraform CLI)\n"
            f"  demo:       {url}/workspaces/{boot['workspace']}/\n"
            f"  API schema: {url}/api/schema/\n"
            f"  metrics:    {url}/metrics with Authorization: Bearer <token>; {self._metrics_token_where()}\n"
            f"  logs:       {logs}/<program>.log; restarts are logged here and in {logs / 'supervisord.log'}\n"
            f"  programs:   {self.ctl} status|stop|start|restart <name>\n"
            "Ctrl-C stops everything (PostgreSQL and Redis included).\n"
            f"The platform is up at {url}/"
        ))
        self._watch()

    def _write_terraform_config(self, url: str, token: str) -> Path:
        """The terraform CLI configuration for this platform, with this run's token (0600):
        terraform's `cloud {}` block reaches it over plain http (tasks_app/tfe/cli_config.py)."""
        path = self.var / "terraform.tfrc"
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(cli_config(url, token))
        return path

    def _metrics_token_where(self) -> str:
        """Where /metrics' token is: it always needs one (settings write a random one into
        the var dir when IAC_METRICS_TOKEN is unset)."""
        if os.environ.get("IAC_METRICS_TOKEN"):
            return "the token is $IAC_METRICS_TOKEN"
        return f"the token is in {self.var / 'metrics_token'} (mode 0600)"

    def _watch(self) -> None:
        """Until Ctrl-C: supervisord restarts what dies; a program it gave up on (FATAL, after
        `startretries` quick failures) is tried again every FATAL_RETRY_SECONDS."""
        retry_at: dict[str, float] = {}
        while True:
            if self.supervisord.poll() is not None:
                raise CommandError(f"supervisord exited ({self.supervisord.returncode}); see {self.logs / 'supervisord.log'}")
            try:
                states = self._states()
            except (OSError, xmlrpc.client.Error):
                states = {}
            now = time.monotonic()
            for name, info in states.items():
                if info["pid"]:
                    self.known_pids[name] = info["pid"]
                if info["statename"] != "FATAL":
                    retry_at.pop(name, None)
                elif name not in retry_at:
                    retry_at[name] = now + FATAL_RETRY_SECONDS
                    self.stderr.write(f"{name} keeps failing to start; trying again in {FATAL_RETRY_SECONDS:g}s "
                                      f"(see {self.logs / f'{name}.log'})")
                elif now >= retry_at[name]:
                    retry_at[name] = now + FATAL_RETRY_SECONDS
                    try:
                        self._rpc().supervisor.startProcess(name, False)
                    except (OSError, xmlrpc.client.Error):
                        pass
            time.sleep(1)

    def _stop(self) -> None:
        """supervisord stops its programs (agents first, PostgreSQL and Redis last); whatever
        is left after that is killed."""
        # The local backend's agents run detached (their own sessions, so that a worker
        # restart does not kill them): stop them first, while web can still hear how their
        # jobs end, and again at the end in case the autoscaler started one meanwhile.
        stopped = stop_all(self.var, grace=30)
        if stopped:
            self.stdout.write(f"    stopped the local pool's agents: {', '.join(stopped)}")
        proc = self.supervisord
        clean = proc is None or proc.poll() is None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                clean = proc.wait(timeout=120) == 0
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                clean = False
        # supervisord died or hung: its programs' process groups may still run.
        for name, pid in ({} if clean else self.known_pids).items():
            try:
                os.killpg(pid, signal.SIGKILL)
                self.stderr.write(f"    {name} (pid {pid}) was still running: killed")
            except (ProcessLookupError, PermissionError):
                pass
        for name in stop_all(self.var, grace=10):
            self.stderr.write(f"    agent {name} was still running: stopped")
        if not os.environ.get("DATABASE_URL") and embedded.stop_postgres(self.var):
            self.stderr.write("    PostgreSQL was still running: stopped")
        if not os.environ.get("REDIS_URL") and embedded.stop_redis(self.var):
            self.stderr.write("    redis-server was still running: stopped")
