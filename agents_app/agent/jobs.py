"""One job on the agent: plan, warmup or apply, in `<work root>/<workspace>/<task>/`."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agents_app.agent.client import Client, ServerError
from agents_app.agent.logstream import LogStream
from agents_app.agent.providers import sha256_file
from agents_app.agent.remote_state import remote_state_env
from agents_app.agent.sandbox import Sandbox, job_environment
from agents_app.agent.warmdirs import StartDecision, WarmPlans
from agents_app.ansi import strip_ansi
from agents_app.protocol import (
    ApplyPath,
    CommandTime,
    FinishReply,
    JobKind,
    JobOutcome,
    JobPayload,
    JobResult,
    LogEvents,
    PlanMode,
    PlanOptions,
    PlanUpload,
    WarmOrigin,
)
from agents_app.redaction import Redactor
from agents_app.variable_names import IDENTIFIER, env_name_problem

# Overrides any backend block in the user's files; its settings come only from TF_HTTP_*
# environment variables, so no credential lands in a file, in .terraform/ or in plan.out.
# (The file name starts with "zzz" so terraform reads it last and it overrides.)
BACKEND_OVERRIDE = 'terraform {\n  backend "http" {}\n}\n'
BACKEND_OVERRIDE_NAME = "zzz_iac_backend_override.tf"
CANCEL_GRACE_SECONDS = 10


# How long the warm apply's start event (ack, start time, path) waits at most for terraform's
# first line, which it then goes with at once (LogStream.event(until_text=True)): the first
# line is never held back; without output by then the event goes alone.
APPLY_START_HOLD_SECONDS = 0.2
# How long a plan's first text waits, gathering what follows, before it is posted: a short
# plan's whole log then travels inside its finish report, and no log post competes with
# terraform's state calls as it starts; a longer plan's first lines show this much later.
PLAN_START_HOLD_SECONDS = 0.3


def _process_group(pgid: int) -> list[tuple[int, str]]:
    """(pid, command name) of the processes in the process group `pgid`, from /proc."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue  # gone meanwhile
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if int(rest[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
            members.append((int(entry.name), name))
    return members


def interrupt(pgid: int) -> bool:
    """SIGINT to terraform and its children (the process group `pgid`), as Ctrl-C would, but
    not to bubblewrap: bwrap does not handle SIGINT, so it would die at once and its
    --die-with-parent would SIGKILL terraform before it could stop at a safe point, save the
    state and release its lock. Returns False when the group is gone."""
    try:
        members = [pid for pid, name in _process_group(pgid) if name != "bwrap"]
    except OSError:  # no /proc: the whole group, as before
        members = []
    if not members:
        try:
            os.killpg(pgid, signal.SIGINT)
        except ProcessLookupError:
            return False
        return True
    for pid in members:
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    return True


class JobError(Exception):
    def __init__(self, message: str, *, stale: bool = False) -> None:
        super().__init__(message)
        self.stale = stale


class Cancelled(Exception):
    pass


# Written into a kept dir: a restarted agent process finds its warm dirs again by it.
WARM_MARKER = ".iac-warm.json"


@dataclass
class WarmDir:
    task_id: int
    path: Path
    plan_hash: str
    origin: WarmOrigin
    created_at: float = field(default_factory=time.time)

    def save_marker(self) -> None:
        marker = {"task": self.task_id, "plan_hash": self.plan_hash, "origin": self.origin,
                  "created_at": self.created_at}
        tmp = self.path / (WARM_MARKER + ".tmp")
        tmp.write_text(json.dumps(marker))
        tmp.replace(self.path / WARM_MARKER)

    @classmethod
    def load(cls, path: Path) -> WarmDir | None:
        """The warm dir recorded in `path`, if its marker and plan.out are intact."""
        try:
            marker = json.loads((path / WARM_MARKER).read_text())
            warm = cls(int(marker["task"]), path, str(marker["plan_hash"]), WarmOrigin(marker["origin"]),
                       float(marker["created_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return warm if (path / "plan.out").exists() else None


def plan_option_args(options: PlanOptions) -> list[str]:
    """terraform plan's arguments for the run's options (each address one argv element: no shell)."""
    args = {PlanMode.DESTROY: ["-destroy"], PlanMode.REFRESH_ONLY: ["-refresh-only"]}.get(options.mode, [])
    args += [f"-target={address}" for address in options.targets]
    args += [f"-replace={address}" for address in options.replace]
    return args


SENSITIVE = "(sensitive value)"
UNKNOWN = "(known after apply)"
DIFF_MAX_ATTRIBUTES = 200  # per resource: the page's diff, not a dump of the plan
DIFF_MAX_VALUE_CHARS = 2000


def _masked(value: Any, sensitive: Any) -> Any:
    """`value` with what terraform marks sensitive (`before_sensitive`/`after_sensitive`: true,
    or a structure of the value's shape with true at the sensitive leaves) replaced by a mask:
    sensitive values never leave the agent, not even in the plan's summary."""
    if sensitive is True:
        return SENSITIVE
    if isinstance(value, dict) and isinstance(sensitive, dict):
        return {k: _masked(v, sensitive.get(k)) for k, v in value.items()}
    if isinstance(value, list) and isinstance(sensitive, list):
        return [_masked(v, sensitive[i] if i < len(sensitive) else None) for i, v in enumerate(value)]
    return value


def _shown(value: Any) -> str:
    text = value if value in (SENSITIVE, UNKNOWN) else json.dumps(value, sort_keys=True)
    return text if len(text) <= DIFF_MAX_VALUE_CHARS else text[:DIFF_MAX_VALUE_CHARS] + "…"


def attribute_diff(change: dict) -> list[dict[str, str]]:
    """The top-level attributes a resource change touches, as [{name, before, after}] (JSON
    text, sensitive ones masked, unknown ones "(known after apply)"); null is absent. A
    sensitive attribute that changed is listed (masked on both sides), as terraform does."""
    raw_before = change.get("before") if isinstance(change.get("before"), dict) else {}
    raw_after = change.get("after") if isinstance(change.get("after"), dict) else {}
    before = _masked(raw_before, change.get("before_sensitive"))
    after = _masked(raw_after, change.get("after_sensitive"))
    unknown = change.get("after_unknown") if isinstance(change.get("after_unknown"), dict) else {}
    rows = []
    for name in sorted(set(raw_before) | set(raw_after) | {k for k, v in unknown.items() if v is True}):
        is_unknown = unknown.get(name) is True
        if not is_unknown and raw_before.get(name) == raw_after.get(name):
            continue
        old, new = before.get(name), UNKNOWN if is_unknown else after.get(name)
        if old is None and new in (None, [], {}):
            continue
        rows.append({"name": name, "before": "" if old is None else _shown(old), "after": "" if new is None else _shown(new)})
        if len(rows) >= DIFF_MAX_ATTRIBUTES:
            break
    return rows


def plan_summary(show_json: dict) -> dict[str, Any]:
    counts = {"add": 0, "change": 0, "destroy": 0, "replace": 0, "import": 0}
    resources = []
    for rc in show_json.get("resource_changes", []) or []:
        actions = rc.get("change", {}).get("actions", [])
        if actions == ["no-op"] or actions == ["read"]:
            continue
        resources.append({"address": rc.get("address"), "actions": actions, "diff": attribute_diff(rc.get("change", {}))})
        if "create" in actions and "delete" in actions:
            counts["replace"] += 1
            counts["add"] += 1
            counts["destroy"] += 1
        elif "create" in actions:
            counts["add"] += 1
        elif "update" in actions:
            counts["change"] += 1
        elif "delete" in actions:
            counts["destroy"] += 1
        if rc.get("change", {}).get("importing"):
            counts["import"] += 1
    outputs = [k for k, v in (show_json.get("output_changes") or {}).items() if v.get("actions") != ["no-op"]]
    # What the refresh found changed outside terraform (a drift check's finding), masked as
    # the changes are.
    drift = [{"address": rc.get("address"), "actions": rc.get("change", {}).get("actions", []),
              "diff": attribute_diff(rc.get("change", {}))}
             for rc in show_json.get("resource_drift", []) or []]
    return {**counts, "resources": resources, "output_changes": outputs, "drift": drift}


class JobHost(Protocol):
    """What a job needs of the agent process that runs it (agents_app.agent.process)."""

    client: Client
    work_root: Path
    terraform: str
    terraform_version: str
    sandbox: Sandbox
    warm_plans: WarmPlans

    def add_warm(self, warm: WarmDir) -> None: ...

    def take_warm(self, task_id: int) -> WarmDir | None: ...

    def job_done(self, job: JobRun, keep: bool) -> None: ...

    def start_jobs(self, payloads: list[JobPayload], via: str = "claimed", on_this_thread: bool = True) -> None: ...


class JobRun:
    def __init__(self, agent: JobHost, payload: JobPayload) -> None:
        self.agent = agent
        self.payload = payload
        self.id: int = payload.id
        self.kind: JobKind = payload.kind
        self.fence: int = payload.fence
        self.task_id: int = payload.task.id
        self.plan_hash: str = payload.task.plan_hash
        self.dir = agent.work_root / str(payload.task.workspace) / str(self.task_id)
        # Everything this job sends is redacted: the sensitive variables and the job's own
        # state credential (user code can print its environment).
        self.redactor = Redactor([*payload.sensitive_values, payload.state_backend.password])
        self.log = LogStream(agent.client, self.id, self.fence, on_lost=self._lost, redactor=self.redactor,
                             start=False)  # started by start(), after a warm apply's terraform
        self.proc: subprocess.Popen | None = None
        self.cancelled = False
        self.interrupted: subprocess.Popen | None = None  # the process that got our SIGINT
        self.lost = False  # the server gave this job to another agent
        self.dir_start: StartDecision | None = None  # how prepare() got the dir initialized (warm plans)
        self.commands: list[CommandTime] = []  # the terraform commands run, timed, for the result
        self.thread = threading.Thread(target=self.run, name=f"job-{self.id}", daemon=True)
        # An apply's path (see apply_begin), chosen once; and what went wrong starting it on
        # the claim's thread, raised again on the job's own thread, which reports it.
        self.apply_path: tuple[ApplyPath, str, bool] | None = None
        self.start_error: Exception | None = None
        self.apply_started = 0.0  # when apply_begin started `terraform apply`
        self._user_env: dict[str, str] | None = None  # see user_env()

    def start(self, *, on_this_thread: bool = True) -> None:
        """Start the job. A warm apply whose plan.out hashes right starts `terraform apply`
        here, on the caller's thread (the claim loop's), before the job's threads: the
        Confirm -> apply hot path then waits for no thread to be started and scheduled (a
        new thread and the log sender's each made the caller wait for the CPU: ~1-4 ms on
        2 busy cores). Everything else, the apply's output among it, runs on the job's thread.

        `on_this_thread=False` for a caller whose thread ends soon (a job's, which got this
        apply with its result): the sandbox's --die-with-parent kills terraform when the
        *thread* that started it exits (PR_SET_PDEATHSIG), so the job's own thread starts it."""
        if self.kind == JobKind.APPLY and on_this_thread:
            try:
                self.apply_begin(quick=True)
            except Exception as exc:  # noqa: BLE001 - raised again on the job's thread (run reports it)
                self.start_error = exc
        self.log.start()
        self.thread.start()

    # --- control ---------------------------------------------------------------------------

    def cancel(self, force: bool, grace: float | None = None) -> None:
        """SIGINT lets terraform stop cleanly (save state, release the state lock); SIGKILL
        after `grace` seconds (default CANCEL_GRACE_SECONDS), or at once with force. The
        server repeats a cancel order in every heartbeat: each terraform process gets one
        SIGINT only, because a second one makes terraform exit at once without saving state."""
        self.cancelled = True
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return  # between commands: `terraform()` refuses to start the next one
        if force:
            self._kill(proc)
            return
        if self.interrupted is proc:
            return
        self.interrupted = proc
        if not interrupt(proc.pid):
            return
        timer = threading.Timer(CANCEL_GRACE_SECONDS if grace is None else grace, self._kill, args=(proc,))
        timer.daemon = True
        timer.start()

    def _lost(self) -> None:
        self.lost = True
        self.cancel(force=True)

    def _kill(self, proc: subprocess.Popen | None = None) -> None:
        proc = proc or self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # --- helpers ---------------------------------------------------------------------------

    def call(self, method: str, path: str, **kw: Any) -> Any:
        return self.agent.client.call(method, f"/agent/v1/jobs/{self.id}/{path}", fence=self.fence, **kw)

    def user_env(self) -> dict[str, str]:
        """The job's variables as environment variables: TF_VAR_<key> for terraform variables,
        the `env` ones as they are, except names the platform refuses (agents_app/
        variable_names.py: rows stored before the rule, or written around the API), which
        are left out with a line in the run's log (their name, never their value). Worked
        out once per job: each terraform command of the job gets the same."""
        if self._user_env is None:
            variables = self.payload.variables
            named = [(f"TF_VAR_{k}", v, "" if IDENTIFIER.match(k) else env_name_problem(k))
                     for k, v in variables.terraform.items()]
            named += [(k, v, env_name_problem(k)) for k, v in variables.env.items()]
            self._user_env = {}
            for name, value, problem in named:
                if not problem and "\0" in value:
                    problem = f"{name}: its value holds a NUL character, which no environment can carry"
                if problem:
                    self.log.write(f"Warning: {problem}; the variable was left out of this run.\n")
                    continue
                self._user_env[name] = value
        return self._user_env

    def env(self) -> dict[str, str]:
        """Terraform's environment: an allowlist of the agent's (never its IAC_* settings, the
        pool token among them), the job's variables, and then the platform's own values,
        which no variable overrides: HOME (the job dir: nothing of the host's home, its
        credentials, is meant for user code), terraform's automation settings, the state
        backend and its credential, and any registry token (TF_TOKEN_*) the agent was given.

        This environment is terraform's, inside the sandbox: the processes that start it
        outside (nice, bwrap) get only the agent's allowlist (Sandbox.popen)."""
        sb = self.payload.state_backend
        agent_env = job_environment()
        env = {**agent_env, **self.user_env()}
        env.update(
            HOME=str(self.dir.absolute()),
            TF_IN_AUTOMATION="1",
            TF_INPUT="0",
            CHECKPOINT_DISABLE="1",
            TF_HTTP_ADDRESS=sb.address,
            TF_HTTP_LOCK_ADDRESS=sb.lock_address,
            TF_HTTP_UNLOCK_ADDRESS=sb.unlock_address,
            TF_HTTP_USERNAME=sb.username,
            TF_HTTP_PASSWORD=sb.password,
        )
        if self.payload.tfe_hostname and self.dir.is_dir():
            # terraform_remote_state (backend "remote") against the platform, with this job's
            # credential. Written for each command: a cold start replaces the dir.
            env.update(remote_state_env(
                job_dir=self.dir, hostname=self.payload.tfe_hostname,
                server_url=sb.address.split("/api/v1/", 1)[0], credential=sb.password,
                base_cli_config=agent_env.get("TF_CLI_CONFIG_FILE")))
        env.update({k: v for k, v in agent_env.items() if k.startswith("TF_TOKEN_")})
        return env

    def terraform(self, *args: str, ok: tuple[int, ...] = (0,), on_start: Any = None, header: bool = True) -> int:
        started = self.spawn(*args, on_start=on_start, header=header)
        return self.wait_for(args[0], started, ok=ok)

    def spawn(self, *args: str, on_start: Any = None, header: bool = True) -> float:
        """Start `terraform args` (self.proc); returns when it started. wait_for() follows."""
        if self.cancelled:
            raise Cancelled()
        if header:
            self.log.write(f"\n$ terraform {' '.join(args)}\n")
        started = time.time()
        self.proc = self.agent.sandbox.popen(
            # The secrets (TF_HTTP_PASSWORD, sensitive TF_VAR_*) reach terraform through the
            # sandbox's pipe (or, sandbox off, its environment), never a command line:
            # /proc/<pid>/cmdline is readable by anyone.
            [self.agent.terraform, *args], self.dir, self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: cancel signals reach terraform's children
        )
        if on_start:
            on_start()
        return started

    def wait_for(self, command: str, started: float, ok: tuple[int, ...] = (0,)) -> int:
        """Stream the output of the process spawn() started until it exits; raises JobError
        when its exit code is not in `ok`, Cancelled when the job was cancelled."""
        assert self.proc is not None and self.proc.stdout is not None
        output: list[str] = []
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode(errors="replace")
            output.append(line)
            self.log.write(line)
        rc = self.proc.wait()
        self._ran(command, started, rc)
        # The log keeps terraform's colours (the run page renders them); errors and the
        # checks on the output read it without them.
        self.last_output = strip_ansi("".join(output))
        if self.cancelled:
            raise Cancelled()
        if rc not in ok:
            tail = self.last_output.strip().splitlines()[-15:]
            raise JobError(f"terraform {command} exited with {rc}: " + "\n".join(tail))
        return rc

    def _ran(self, command: str, started: float, exit_code: int) -> None:
        """Record a terraform command that ran from `started` until now, for the result."""
        self.commands.append(CommandTime(command=command, started_at=started, ended_at=time.time(),
                                         exit_code=exit_code))

    def prepare(self) -> None:
        """Full preparation: fresh dir, configuration, backend override, terraform init."""
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        # Small archives come inside the claim's answer; larger ones are fetched.
        inline = self.payload.configuration_b64
        archive = base64.b64decode(inline) if inline else self.call("GET", "configuration", raw=True)
        if hashlib.sha256(archive).hexdigest() != self.payload.configuration_sha256:
            raise JobError("configuration archive does not match its sha256")
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            # The server validated the archive; the data filter refuses anything unsafe again.
            tar.extractall(self.dir, filter="data")
        (self.dir / BACKEND_OVERRIDE_NAME).write_text(BACKEND_OVERRIDE)
        # terraform init, with providers from the agent's cache; a plan reuses the
        # workspace's checked warm plan dir instead when it can (agents_app/agent/warmdirs.py).
        self.dir_start = self.agent.warm_plans.start(self)

    def restore_plan(self) -> None:
        data = self.call("GET", "plan-file", raw=True)
        (self.dir / "plan.out").write_bytes(data)
        actual = hashlib.sha256(data).hexdigest()
        if actual != self.plan_hash:
            raise JobError(
                f"plan file corrupted: the stored plan hashes to {actual}, not the reviewed plan_hash "
                f"{self.plan_hash}; nothing was applied"
            )

    def finish(self, outcome: JobOutcome, *, error: str = "", kept_dir: bool = False,
               plan: PlanUpload | None = None) -> bool:
        """Report the result, with the log's last text and a plan job's plan in the same
        request; returns whether the server wants the dir kept (reserved)."""
        # Kept before the result is sent, so the workspace's next plan (queued the moment this
        # one ends) finds it; not a dir reserved for the apply, nor a failed job's.
        warm_kept = self.agent.warm_plans.finished(
            self.dir, self.payload.task.workspace, reserved=kept_dir,
            keep=outcome == JobOutcome.SUCCEEDED and self.kind in (JobKind.PLAN, JobKind.APPLY))
        warm_version, warm_workspaces = self.agent.warm_plans.snapshot() if warm_kept else (None, None)
        rest = self.log.rest()  # the posts before it (the ack among them) are done
        if self.lost:
            return False
        start = self.dir_start if self.kind == JobKind.PLAN else None
        # The error holds terraform's last lines, which may show a secret (user code printing
        # it, a failed validation quoting a value): redacted like the log.
        result = JobResult(outcome=outcome, error=self.redactor.redact(error), kept_dir=kept_dir,
                           sandbox=self.agent.sandbox.mode, plan_start=start.kind if start else None,
                           plan_start_reason=start.reason if start else "", warm_plan_kept=warm_kept,
                           warm_plan_workspaces=warm_workspaces, warm_plans_version=warm_version,
                           log=rest, plan=plan, commands=self.commands)
        try:
            reply = FinishReply.model_validate(self.call("POST", "finish", json=result.model_dump(mode="json")))
        except ServerError as exc:
            if exc.status == 409:  # the job moved on while we worked: our result does not count
                return False
            raise
        if reply.jobs:
            # The apply of this run, handed over with the result (auto-apply, or an apply that
            # waited for this warmup): it starts in the dir kept above, on this thread, now.
            self.agent.start_jobs(reply.jobs, via="handed", on_this_thread=False)  # this thread ends now
        return reply.keep_dir

    # --- the job ---------------------------------------------------------------------------

    def run(self) -> None:
        keep = False
        try:
            keep = getattr(self, f"do_{self.kind}")()
        except Cancelled:
            self.finish(JobOutcome.CANCELLED, error="cancelled while terraform was running")
        except JobError as exc:
            self.log.write(f"\nError: {exc}\n")
            self.finish(JobOutcome.STALE if exc.stale else JobOutcome.FAILED, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - report, never leave the job hanging
            self.log.write("\nagent error:\n" + traceback.format_exc())
            try:
                self.finish(JobOutcome.FAILED, error=f"agent error: {exc}")
            except Exception:  # noqa: BLE001
                pass
        finally:
            self.agent.job_done(self, keep)

    def do_plan(self) -> bool:
        self.log.hold(PLAN_START_HOLD_SECONDS)
        self.prepare()
        args = ["plan", "-input=false", "-out=plan.out", "-detailed-exitcode"]
        if self.payload.speculative:
            args.append("-lock=false")  # plan-only runs must not block an apply's lock
        args += plan_option_args(self.payload.plan_options)
        rc = self.terraform(*args, ok=(0, 2))
        has_changes = rc == 2
        started = time.time()
        with self.agent.sandbox.popen([self.agent.terraform, "show", "-json", "-no-color", "plan.out"], self.dir,
                                      self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL) as show:
            show_out, show_err = show.communicate()
        self._ran("show", started, show.returncode)
        if show.returncode != 0:
            raise JobError("terraform show -json failed: " + show_err.decode(errors="replace")[-2000:])
        summary = plan_summary(json.loads(show_out))
        data = (self.dir / "plan.out").read_bytes()
        self.plan_hash = hashlib.sha256(data).hexdigest()
        # The plan's JSON goes to the server when policies govern the workspace: the server
        # checks it (an agent's word is not a policy decision).
        plan_json = base64.b64encode(gzip.compress(show_out, 6)).decode() if self.payload.plan_json else ""
        upload = PlanUpload(plan_b64=base64.b64encode(data).decode(), sha256=self.plan_hash, summary=summary,
                            has_changes=has_changes, terraform_version=self.agent.terraform_version,
                            json_gz_b64=plan_json)
        keep = bool(self.payload.keep_dir and has_changes)
        if keep:
            # Registered before `finish` so a heartbeat sent meanwhile already reports it.
            self.agent.add_warm(WarmDir(self.task_id, self.dir, self.plan_hash, WarmOrigin.PLAN))
        # The plan travels with the result: stored and reported in one request and transaction.
        return self.finish(JobOutcome.SUCCEEDED, kept_dir=keep, plan=upload) and keep

    def do_warmup(self) -> bool:
        self.prepare()
        self.restore_plan()
        self.agent.add_warm(WarmDir(self.task_id, self.dir, self.plan_hash, WarmOrigin.WARMUP))
        return self.finish(JobOutcome.SUCCEEDED, kept_dir=True)

    def apply_begin(self, *, quick: bool) -> None:
        """Choose the apply's path (once) and start `terraform apply` in its dir. With quick
        (start(), on the claim's thread), only when nothing on the way needs the server: a
        warm dir whose plan.out hashes to plan_hash; otherwise nothing is started, and the
        job's thread goes on from the same choice.

        The acknowledgement travels as a log event, without waiting for its answer, so its
        round trip stays off the Confirm -> apply path. Safety does not depend on it: if the
        server already gave the job to another agent, it revoked this job's state
        credential, so `terraform apply` fails at "Acquiring state lock" before it changes
        anything; and the 409 the log stream then gets kills terraform (on_lost).
        On the warm paths the acknowledgement goes with the apply's start and terraform's
        first line, the moment that line is written (at most APPLY_START_HOLD_SECONDS later
        without it; agent/logstream.py): the person who confirmed sees the first line as soon
        as terraform writes it. Late is not lost: the server never hands a pushed apply
        elsewhere within seconds."""
        if self.apply_path is None:
            warm = self.agent.take_warm(self.task_id)
            if warm is not None and (warm.path / "plan.out").exists():
                self.dir = warm.path
                path = ApplyPath.FAST if warm.origin == WarmOrigin.PLAN else ApplyPath.REWARMED
                reason = (
                    "the plan's own work dir, kept on this agent" if path == ApplyPath.FAST
                    else "work dir warmed up ahead of Confirm on this agent"
                )
                if self.payload.note:
                    reason += f"; {self.payload.note}"
                # Re-hash before applying: the dir sat on disk while a person reviewed the plan.
                verified = sha256_file(self.dir / "plan.out") == self.plan_hash
            else:
                path, reason, verified = ApplyPath.COLD, self.payload.cold_reason or "no warm dir on this agent", False
            self.apply_path = (path, reason, verified)
        path, reason, verified = self.apply_path
        if not verified:
            if quick:
                return
            if path == ApplyPath.COLD:
                self.log.event(LogEvents(ack=True))  # before the slow preparation, not after it
                self.prepare()
            else:
                self.log.write("local plan.out does not match plan_hash: restoring it from the server\n")
                reason += "; local plan.out was corrupt and was restored from the database"
            self.restore_plan()  # raises unless the restored bytes hash to plan_hash
            self.apply_path = (path, reason, True)

        def started() -> None:
            self.log.event(LogEvents(ack=True, apply_started_at=time.time(), apply_path=path, apply_path_reason=reason),
                           hold=APPLY_START_HOLD_SECONDS, until_text=True)

        self.apply_started = self.spawn("apply", "-input=false", "plan.out", on_start=started, header=False)

    def do_apply(self) -> bool:
        if self.start_error is not None:
            raise self.start_error
        if self.proc is None:  # not started by start(): cold, or a local plan.out to restore
            self.apply_begin(quick=False)
        assert self.apply_path is not None
        path, reason, _ = self.apply_path
        try:
            self.wait_for("apply", self.apply_started)
        except JobError as exc:
            if "Saved plan is stale" in getattr(self, "last_output", ""):
                raise JobError("the workspace state changed after the plan (terraform: saved plan is stale)",
                               stale=True) from exc
            raise
        self.log.write(f"\n[apply path: {path}: {reason}]\n")
        self.finish(JobOutcome.SUCCEEDED)
        return False
