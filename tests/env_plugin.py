"""Test-wide environment, set before Django reads its settings (loaded with -p).

The control-loop timings are shortened so liveness and expiry can be observed in seconds;
the server processes started by the e2e fixtures inherit the same values."""

import os

TEST_ENV = {
    "IAC_AGENT_HEARTBEAT_SECONDS": "1",
    "IAC_AGENT_OFFLINE_AFTER_SECONDS": "4",
    "IAC_SWEEP_INTERVAL_SECONDS": "1",
    "IAC_TARGET_CLAIM_TIMEOUT_SECONDS": "2",
    "IAC_CLAIM_LONGPOLL_SECONDS": "10",
}
for key, value in TEST_ENV.items():
    os.environ.setdefault(key, value)
