"""How the agent stops terraform on a cancel order (no server: a real child process that
behaves like terraform on SIGINT, counting the interrupts it gets)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from pydantic import ValidationError

from agents_app.agent.jobs import CANCEL_GRACE_SECONDS, JobRun
from agents_app.agent.sandbox import job_environment, make_sandbox
from agents_app.protocol import CancelOrder, HeartbeatReply, JobPayload
from tests.agents_app.test_agent_housekeeping import make_agent

# Like terraform: the first SIGINT starts a graceful stop it never finishes here (it would
# save state and unlock); each interrupt is written down, so a test can count them.
TERRAFORM_LIKE = """
import signal, sys, time
out = sys.argv[1]
def interrupted(signum, frame):
    with open(out, "a") as fh:
        fh.write("SIGINT\\n")
signal.signal(signal.SIGINT, interrupted)
open(out, "a").close()
while True:
    time.sleep(0.05)
"""


def payload(job_id: int = 7) -> JobPayload:
    return JobPayload.model_validate({
        "id": job_id, "kind": "apply", "fence": 1, "configuration_sha256": "0" * 64, "keep_dir": False,
        "speculative": False, "variables": {},
        "task": {"id": 3, "workspace": 1, "workspace_name": "ws", "operation": "plan_and_apply"},
        "state_backend": {"address": "http://x", "lock_address": "http://x", "unlock_address": "http://x",
                          "username": "job-7", "password": "secret"},
    })


@pytest.fixture(params=["off", "bwrap"])
def job(request, tmp_path):
    """A terraform-like process as the agent starts it: directly, or inside its bubblewrap
    sandbox (which must not turn SIGINT into an immediate kill)."""
    run = JobRun(make_agent(tmp_path), payload())
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    signals = job_dir / "signals.txt"
    sandbox = make_sandbox(request.param, sys.executable, tmp_path / "root", env={})
    run.proc = subprocess.Popen(sandbox.command([sys.executable, "-c", TERRAFORM_LIKE, str(signals)], job_dir),
                                start_new_session=True, env=job_environment())
    deadline = time.monotonic() + 10
    while not signals.exists():  # its handler is installed
        assert time.monotonic() < deadline
        time.sleep(0.02)
    yield run, signals
    if run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait()


def test_it_interrupts_terraform_once_however_often_the_order_repeats_then_kills_it_after_the_grace(job):
    run, signals = job
    started = time.monotonic()
    for _ in range(3):  # the server repeats the order in every heartbeat
        run.cancel(force=False, grace=1.0)
        time.sleep(0.2)
    assert run.cancelled
    assert signals.read_text() == "SIGINT\n", "a second SIGINT would make terraform exit without saving state"
    assert run.proc.poll() is None, "still within the grace"
    rc = run.proc.wait(timeout=10)
    assert rc == -9 and time.monotonic() - started >= 1.0  # SIGKILL, after the grace


# Like terraform once it reached a safe point: on SIGINT it finishes its work (saves the
# state, releases its lock) and exits by itself.
GRACEFUL = """
import signal, sys, time
out = sys.argv[1]
def interrupted(signum, frame):
    time.sleep(1)  # writing the state, unlocking
    with open(out, "a") as fh:
        fh.write("stopped cleanly\\n")
    sys.exit(1)
signal.signal(signal.SIGINT, interrupted)
open(out, "a").close()
while True:
    time.sleep(0.05)
"""


@pytest.mark.parametrize("mode", ["off", "bwrap"])
def test_it_lets_terraform_finish_its_graceful_stop_inside_the_sandbox(tmp_path, mode):
    run = JobRun(make_agent(tmp_path), payload())
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    out = job_dir / "out.txt"
    sandbox = make_sandbox(mode, sys.executable, tmp_path / "root", env={})
    run.proc = subprocess.Popen(sandbox.command([sys.executable, "-c", GRACEFUL, str(out)], job_dir),
                                start_new_session=True, env=job_environment())
    deadline = time.monotonic() + 10
    while not out.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    run.cancel(force=False, grace=30)
    assert run.proc.wait(timeout=10) == 1, "terraform's own exit, not a kill of the sandbox"
    assert out.read_text() == "stopped cleanly\n"


def test_it_waits_the_orders_grace_before_killing_and_kills_at_once_when_forced(job):
    run, signals = job
    run.cancel(force=False, grace=60)
    time.sleep(1.5)
    assert run.proc.poll() is None, "an apply's long grace: terraform gets time to reach a safe point"
    run.cancel(force=True)
    assert run.proc.wait(timeout=5) == -9
    assert signals.read_text() == "SIGINT\n"


def test_it_reads_a_cancel_order_without_a_grace_as_the_agents_default():
    reply = HeartbeatReply.model_validate({"cancel": [{"id": 1}, {"id": 2, "grace": 900}], "heartbeat_interval": 10})
    assert reply.cancel == [CancelOrder(id=1, force=False, grace=None), CancelOrder(id=2, grace=900.0)]
    assert CANCEL_GRACE_SECONDS == 10  # what grace=None means: today's behaviour
    with pytest.raises(ValidationError):
        CancelOrder(id=1, grace=-1)
