"""`make test` leaves no embedded server running: every pytest session holds the var dir's
users lock (shared) and the last one to end stops PostgreSQL and Redis. Real servers, in a
var dir of the test's own; the other session is a real second process."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from iacplatform import embedded
from tests.live import ROOT, wait_for

OTHER_SESSION = """
import sys
from pathlib import Path
from iacplatform import embedded
var = Path(sys.argv[1])
handle = embedded.hold_users_lock(var)
print("holding", flush=True)
sys.stdin.readline()
print("stopped:" + ",".join(embedded.leave(var, handle)), flush=True)
"""


def _servers_of(var: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(var) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_the_last_session_to_end_stops_the_embedded_servers():
    # Not pytest's tmp_path (0700): PostgreSQL runs as its own user when we are root.
    root = Path(tempfile.mkdtemp(prefix="iac-sessions-"))
    root.chmod(0o755)
    var = root / "var"
    var.mkdir()
    other = subprocess.Popen([sys.executable, "-c", OTHER_SESSION, str(var)], cwd=ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert other.stdout.readline().strip() == "holding"
        mine = embedded.hold_users_lock(var)
        embedded.ensure_postgres(var)
        embedded.ensure_redis(var)
        assert embedded.postgres_running(var) and embedded.redis_running(var)

        # This session ends first: the other one still uses the servers.
        assert embedded.leave(var, mine) == []
        assert embedded.postgres_running(var) and embedded.redis_running(var)

        # The other one ends last: it stops both, and nothing of the var dir is left.
        other.stdin.write("end\n")
        other.stdin.flush()
        assert other.stdout.readline().strip() == "stopped:postgres,redis"
        assert other.wait(30) == 0
        assert not embedded.postgres_running(var)
        assert not embedded.redis_running(var)
        wait_for(lambda: not _servers_of(var), 10, "the servers' processes to exit")

        # A session that starts afterwards gets fresh servers, and stops them itself.
        again = embedded.hold_users_lock(var)
        embedded.ensure_postgres(var)
        assert embedded.postgres_running(var)
        assert embedded.leave(var, again) == ["postgres"]
        assert not embedded.postgres_running(var)
    finally:
        if other.poll() is None:
            other.kill()
        embedded.stop_servers(var)
        shutil.rmtree(root, ignore_errors=True)
