"""Test-wide environment, set before Django reads its settings (loaded with -p).

The control-loop timings are shortened so liveness and expiry can be observed in seconds;
the server processes started by the e2e fixtures inherit the same values.

The session also holds the var dir's users lock (iacplatform.embedded) from before Django
starts the embedded PostgreSQL and Redis until its very end: the last session to end (two may
run at once in one checkout, with different IAC_TEST_DB_NAME) stops them, so `make test`
leaves no server running. A `manage.py up` on the same var dir holds the lock too."""

import os
import tempfile
from pathlib import Path

TEST_ENV = {
    "IAC_AGENT_HEARTBEAT_SECONDS": "1",
    "IAC_AGENT_OFFLINE_AFTER_SECONDS": "4",
    "IAC_SWEEP_INTERVAL_SECONDS": "1",
    "IAC_TARGET_CLAIM_TIMEOUT_SECONDS": "2",
    "IAC_CLAIM_LONGPOLL_SECONDS": "10",
    "IAC_AUTOSCALE_INTERVAL_SECONDS": "1",
    # A full pool releases reservations at once in tests (the grace is tested on its own:
    # tests/agents_app/test_dispatch.py), so a test's queued plan does not wait 30 s.
    "IAC_RESERVATION_GRACE_SECONDS": "0",
    # The tests' git servers and forge APIs listen on the loopback.
    "IAC_VCS_ALLOW_LOCAL_HOSTS": "true",
    "IAC_VCS_TICK_SECONDS": "1",
    # A forge's failed report is retried within a second (2, 4, 8 s by default).
    "IAC_VCS_REPORT_BACKOFF_SECONDS": "0.1",
    # Notifications: the tests' receivers listen on the loopback (a site's setting allows it;
    # tests/tasks_app/test_notifications.py checks the refusal without it), and retries come
    # within a second.
    "IAC_NOTIFY_ALLOW_PRIVATE_ADDRESSES": "1",
    "IAC_NOTIFY_BACKOFF_SECONDS": "0.2",
    "IAC_NOTIFY_INTERVAL_SECONDS": "1",
    "IAC_DRIFT_INTERVAL_SECONDS": "1",
}
for key, value in TEST_ENV.items():
    os.environ.setdefault(key, value)

# pytest-xdist's worker id ("gw0", "gw1", ...; set before this plugin loads), or "" in a
# serial session. Each worker has its own test database (pytest-django suffixes its name),
# Redis (below), agent work roots, live-server ports and log dir (tests/live.py).
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")

# Agents the live worker's local backend starts (tests/e2e/test_autoscale.py) keep their work
# roots here, not under the user's ~/.local/state.
os.environ.setdefault("IAC_AGENT_WORK_ROOT",
                      os.path.join(tempfile.gettempdir(), "iac-test-pods" + (f"-{WORKER}" if WORKER else "")))

# The web processes' fallback sweep (tasks_app/sweep_fallback.py) never runs in the test
# process itself, which imports iacplatform.asgi; the servers it starts turn it back on
# (tests/live.py server_env).
os.environ["IAC_SWEEP_FALLBACK_AFTER_SECONDS"] = "0"

from iacplatform import embedded  # noqa: E402

# As iacplatform/settings.py computes it.
VAR_DIR = Path(os.environ.get("IAC_VAR_DIR") or Path(__file__).resolve().parent.parent / "var").resolve()
_users = embedded.hold_users_lock(VAR_DIR)

# An xdist worker gets a redis-server of its own (var/xdist/<worker>/redis): the workers'
# databases have the same ids (agent 1, run 1, ...), and Redis keys (iac:push:agent:1),
# pub/sub wake-up channels (which no database index separates) and the Channels layer's
# groups named after them would otherwise reach the other worker's processes. Set as
# REDIS_URL before Django reads its settings, so the live servers get it too.
_worker_redis = None
if WORKER and not os.environ.get("REDIS_URL"):
    _worker_redis = VAR_DIR / "xdist" / WORKER
    os.environ["REDIS_URL"] = "unix://" + str(embedded.ensure_redis(_worker_redis))


def pytest_unconfigure(config) -> None:
    global _users, _worker_redis
    if _worker_redis is not None:
        embedded.stop_redis(_worker_redis)
        _worker_redis = None
    if _users is not None:
        embedded.leave(VAR_DIR, _users, postgres=not os.environ.get("DATABASE_URL"),
                       redis=not os.environ.get("REDIS_URL"))
        _users = None
