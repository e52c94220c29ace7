"""Secrets never leave the agent: redaction of log chunks (also across chunk boundaries and
JSON-escaped), of job errors, and no secret on a command line. Plain Python: no server, no
terraform."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from agents_app.agent.jobs import JobRun
from agents_app.agent.logstream import LogStream
from agents_app.agent.sandbox import Sandbox, agent_environment, job_environment
from agents_app.agent.warmdirs import WarmPlans
from agents_app.protocol import JobOutcome, JobPayload, SandboxMode
from agents_app.redaction import MASK, Redactor

SECRET = 's3cr3t-"quoted"-\\back'
CREDENTIAL = "job-" + "C" * 43


class RecordingClient:
    """Stands in for agents_app.agent.client.Client: records what would be sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.lock = threading.Lock()

    def call(self, method: str, path: str, *, json: Any = None, **kw: Any) -> Any:
        with self.lock:
            self.calls.append((method, path, json))
        if path.endswith("/finish"):
            return {"keep_dir": False}
        return {}

    def sent_text(self) -> str:
        return "".join(body.get("text", "") for _, path, body in self.calls if path.endswith("/logs"))


def payload(**over: Any) -> JobPayload:
    data: dict[str, Any] = {
        "id": 7, "kind": "plan", "fence": 1, "configuration_sha256": "0" * 64, "keep_dir": False,
        "speculative": False,
        "task": {"id": 3, "workspace": 2, "workspace_name": "ws", "operation": "plan_and_apply"},
        "variables": {"terraform": {"password": SECRET, "region": "eu"}, "env": {}},
        "state_backend": {"address": "http://127.0.0.1:1/state", "lock_address": "http://127.0.0.1:1/state/lock",
                          "unlock_address": "http://127.0.0.1:1/state/lock", "username": "job-7",
                          "password": CREDENTIAL},
        "sensitive_values": [SECRET],
    }
    data.update(over)
    return JobPayload.model_validate(data)


class FakeHost:
    def __init__(self, work_root: Path, sandbox: Sandbox) -> None:
        self.client = RecordingClient()
        self.work_root = work_root
        self.terraform = "/usr/local/bin/terraform"
        self.terraform_version = "1.11.4"
        self.sandbox = sandbox
        self.warm_plans = WarmPlans(work_root / ".warm-plans", budget=0, cache=None)


def test_it_redacts_a_secret_split_across_two_writes():
    redactor = Redactor(["hunter2-password"])
    sent = redactor.feed("line one\nthe password is hunter2-") + redactor.feed("password, really\n") + redactor.flush()
    assert "hunter2" not in sent
    assert sent == f"line one\nthe password is {MASK}, really\n"


def test_it_redacts_a_secret_split_over_many_single_character_writes():
    redactor = Redactor(["abcdef"])
    text = "x abcdef y abcdeg abcdef"
    sent = "".join(redactor.feed(ch) for ch in text) + redactor.flush()
    assert sent == f"x {MASK} y abcdeg {MASK}"


def test_it_sends_whole_lines_at_once_without_holding_anything_back():
    redactor = Redactor(["a-long-secret-value"])
    assert redactor.feed("plan: 1 to add\n") == "plan: 1 to add\n"


def test_it_redacts_json_escaped_values():
    redactor = Redactor([SECRET, "caf\u00e9 <&>"])
    shown = json.dumps({"password": SECRET, "motto": "caf\u00e9 <&>"})
    go_style = '{"motto":"caf\u00e9 \\u003c\\u0026\\u003e"}'  # how terraform (Go) escapes
    redacted = redactor.redact(shown + "\n" + go_style)
    assert "s3cr3t" not in redacted and "caf" not in redacted
    assert redacted.count(MASK) == 3


def test_it_never_posts_a_secret_split_across_log_writes():
    client = RecordingClient()
    stream = LogStream(client, 7, 1, redactor=Redactor([SECRET, CREDENTIAL]))  # type: ignore[arg-type]
    half = len(CREDENTIAL) // 2
    stream.write("TF_HTTP_PASSWORD=" + CREDENTIAL[:half])
    stream.write(CREDENTIAL[half:] + "\npassword=" + SECRET[:5])
    stream.write(SECRET[5:] + "\n")
    stream.close()
    text = client.sent_text()
    assert CREDENTIAL[:half] not in text and CREDENTIAL[half:] not in text and "s3cr3t" not in text
    assert text == f"TF_HTTP_PASSWORD={MASK}\npassword={MASK}\n"


def test_it_redacts_the_job_error_and_the_state_credential_before_reporting(tmp_path):
    host = FakeHost(tmp_path, Sandbox(SandboxMode.OFF))
    job = JobRun(host, payload())  # type: ignore[arg-type]
    error = f"terraform apply exited with 1: echo {SECRET}\nTF_HTTP_PASSWORD={CREDENTIAL}\n{json.dumps(SECRET)}"
    job.finish(JobOutcome.FAILED, error=error)
    result = next(body for _, path, body in host.client.calls if path.endswith("/finish"))
    assert "s3cr3t" not in result["error"] and CREDENTIAL not in result["error"]
    assert result["error"].startswith("terraform apply exited with 1: echo ***")
    assert result["sandbox"] == SandboxMode.OFF


def test_it_keeps_secrets_off_the_terraform_command_line(tmp_path):
    """Anyone on the machine can read /proc/<pid>/cmdline; the environment of another user's
    process they cannot. The secrets reach terraform inside bwrap through a pipe (`--args`),
    neither on a command line nor in bwrap's own environment."""
    sandbox = Sandbox(SandboxMode.BWRAP, "/usr/bin/bwrap", [Path("/opt/terraform")])
    host = FakeHost(tmp_path, sandbox)
    job = JobRun(host, payload(variables={"terraform": {"password": SECRET}, "env": {"API_KEY": "k-" + SECRET}}))  # type: ignore[arg-type]
    argv = sandbox.command([host.terraform, "apply", "-input=false", "plan.out"], job.dir)
    env = job.env()
    assert argv[0] == "/usr/bin/bwrap" and argv[-4:] == [host.terraform, "apply", "-input=false", "plan.out"]
    assert not any(SECRET in a or CREDENTIAL in a for a in argv)
    assert "--setenv" not in argv and "--clearenv" not in argv
    assert env["TF_HTTP_PASSWORD"] == CREDENTIAL and env["TF_VAR_password"] == SECRET
    # Only the job's dir is bound read-write: not the work root (other jobs, the credential).
    binds = [argv[i + 1] for i, a in enumerate(argv) if a in ("--bind", "--bind-try")]
    assert binds == [str(job.dir.absolute())]
    job.log.close()


def test_it_gives_terraform_an_allowlist_of_the_agents_environment():
    agent_env = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "TF_CLI_CONFIG_FILE": "/etc/tf.rc", "TF_HTTP_PASSWORD": "x",
                 "IAC_POOL_TOKEN": "pool-secret", "SECRET_KEY": "django", "DATABASE_URL": "postgresql://"}
    assert job_environment(agent_env) == {"PATH": "/usr/bin", "LANG": "C.UTF-8", "TF_CLI_CONFIG_FILE": "/etc/tf.rc"}


def test_it_starts_agents_with_an_allowlist_of_the_servers_environment():
    server_env = {"PATH": "/usr/bin", "SECRET_KEY": "django", "DATABASE_URL": "postgresql://", "REDIS_URL": "unix://",
                  "IAC_ADMIN_PASSWORD": "admin", "IAC_ENCRYPTION_KEY": "k", "IAC_AGENT_SANDBOX": "bwrap",
                  "PYTHONUNBUFFERED": "1", "TF_CLI_CONFIG_FILE": "/etc/tf.rc"}
    env = agent_environment(server_env, IAC_POOL_TOKEN="pool-x")
    assert env == {"PATH": "/usr/bin", "IAC_AGENT_SANDBOX": "bwrap", "PYTHONUNBUFFERED": "1",
                   "TF_CLI_CONFIG_FILE": "/etc/tf.rc", "IAC_POOL_TOKEN": "pool-x"}
