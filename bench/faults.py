"""The fault suite: the real platform under `manage.py up` (supervised), with faults injected
while runs plan and apply, and a count of what must never happen.

    python -m bench.faults            # every scenario 5 times (`make faults`)
    python -m bench.faults --n 1      # once each (.ci/run)
    python -m bench.faults --only redis_down,pg_restart

Each scenario starts runs on a workspace of its own, injects its fault at a chosen moment,
acts as the user would (confirms a run that waits for it), and waits for every run to end.
Then one more run on the same workspace must plan and apply: whatever the fault did, it
left no lock behind and nothing stuck. Counted for each scenario, and required to be 0:

- lost: a run that ended other than the scenario allows (a plan interrupted by a dead agent
  must still apply; an interrupted apply ends `errored`, never re-run automatically);
- double_applies: more applies recorded by terraform (its local-exec appends to a marker
  file) than runs that ended `applied`;
- stuck: a run not ended within its bound;
- orphan_locks: a state lock still held once every run of the workspace ended;
- out_of_order: state versions whose serials do not grow with the order they were written.

Terraform is wrapped (a shell script the agents run as IAC_TERRAFORM_BIN) so that `init`
and `plan` take a couple of seconds, as a real configuration's do, and so the suite can see
which phase a run is in and on which agent: the wrapper appends one line per phase start and
end. Every apply sleeps a few seconds in its local-exec, so an apply can be hit mid-way.

Prints a table and a machine-readable last line:
`scenarios=… runs=… lost=0 double_applies=0 stuck=0 orphan_locks=0 out_of_order=0`.
Exits 1 when any count is not 0.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.api import FINAL, Api
from bench.live import ROOT, free_port, say, wait_for

VAR = ROOT / "var" / "bench-faults"
SHARED = VAR / "shared"  # wrapper, markers, phase log: bound read-write into the sandbox
APPLY_SLEEP = 3  # seconds each apply's local-exec sleeps
SLOW_PHASE = 2  # seconds the wrapper adds before init and plan
RUN_BOUND = 150  # seconds a run may take, faults included, before it counts as stuck
REDIS_DOWN = 60  # seconds Redis is held down

# Short control-loop timings (offline after a few seconds) and bounds of about a minute.
TIMINGS = {
    "IAC_AGENT_HEARTBEAT_SECONDS": "1",
    "IAC_AGENT_OFFLINE_AFTER_SECONDS": "5",
    "IAC_SWEEP_INTERVAL_SECONDS": "1",
    "IAC_AUTOSCALE_INTERVAL_SECONDS": "1",  # a killed agent's pod is replaced within seconds
    "IAC_TARGET_CLAIM_TIMEOUT_SECONDS": "2",
    "IAC_CLAIM_LONGPOLL_SECONDS": "10",
    "IAC_PLAN_TIMEOUT_SECONDS": "90",
    "IAC_APPLY_TIMEOUT_SECONDS": "90",
    "IAC_NO_AGENT_TIMEOUT_SECONDS": "90",
    "IAC_PLAN_KILL_GRACE_SECONDS": "5",
    "IAC_APPLY_KILL_GRACE_SECONDS": "30",
}

WRAPPER = """#!/bin/sh
# Written by bench.faults: the real terraform, slower in init and plan, with one line per
# phase start and end (pid, dir) in the phase log.
phase="$1"
echo "$(date +%s.%N) start $phase $$ $PWD" >> "{phases}"
case "$phase" in init|plan) sleep {slow} ;; esac
"{real}" "$@"
rc=$?
echo "$(date +%s.%N) end $phase $rc $PWD" >> "{phases}"
exit $rc
"""

CLI_CONFIG = """provider_installation {{
  filesystem_mirror {{
    path    = "{mirror}"
    include = ["*/*/*"]
  }}
}}
"""

MAIN_TF = """
variable "marker_file" {
  type = string
}

resource "terraform_data" "fault" {
  input            = timestamp()
  triggers_replace = timestamp()

  provisioner "local-exec" {
    command = "sleep %(sleep)d; echo applied >> ${var.marker_file}"
  }
}
""" % {"sleep": APPLY_SLEEP}


# --- the platform ----------------------------------------------------------------------------


@dataclass
class Phase:
    at: float
    edge: str  # start | end
    phase: str  # init | plan | show | apply | ...
    agent: str
    workspace: int
    task: int
    detail: str = ""  # start: the pid; end: the exit code


_PHASE = re.compile(r"^(\S+) (start|end) (\S+) (\S+) (\S+)$")


class Platform:
    """`manage.py up` on a var dir of its own, driven through its API and supervisorctl; its
    agents are pods of the local backend, found through their Pod rows."""

    def __init__(self, var: Path) -> None:
        self.var = var
        self.logs = var / "logs"
        self.phases = SHARED / "phases.log"
        self.work_roots = var / "agents"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.up: subprocess.Popen | None = None
        self.api: Api | None = None
        self.pool_id = 0

    # terraform tools and environment
    def env(self) -> dict[str, str]:
        from agents_app.agent.sandbox import executable_paths
        from agents_app.agent.terraform import resolve_terraform

        SHARED.mkdir(parents=True, exist_ok=True)
        (SHARED / "markers").mkdir(exist_ok=True)
        mirror = SHARED / "empty-mirror"
        mirror.mkdir(exist_ok=True)
        real = resolve_terraform(self.var)
        wrapper = SHARED / "terraform"
        wrapper.write_text(WRAPPER.format(real=real, phases=self.phases, slow=SLOW_PHASE))
        wrapper.chmod(0o755)
        cli = SHARED / "terraform.tfrc"
        cli.write_text(CLI_CONFIG.format(mirror=mirror))
        env = dict(os.environ)
        for name in ("DATABASE_URL", "REDIS_URL"):  # the embedded servers of our var dir
            env.pop(name, None)
        env.update(TIMINGS)
        env.update(
            IAC_VAR_DIR=str(self.var),
            IAC_TERRAFORM_BIN=str(wrapper),
            TF_CLI_CONFIG_FILE=str(cli),
            IAC_AGENT_WORK_ROOT=str(self.work_roots),
            IAC_AGENT_SANDBOX_BIND=os.pathsep.join(str(p) for p in executable_paths(real)),
            IAC_AGENT_SANDBOX_BIND_RW=str(SHARED),
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self) -> None:
        env = self.env()
        self.logs.mkdir(parents=True, exist_ok=True)
        say(f"==> manage.py up on {self.url} (var dir {self.var}; its output: {self.logs / 'up.log'})")
        log = open(self.logs / "up.log", "wb")
        self.up = subprocess.Popen(
            [sys.executable, "manage.py", "up", "--port", str(self.port)], cwd=ROOT, env=env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

        def token() -> str | None:
            if self.up.poll() is not None:
                raise RuntimeError(f"manage.py up exited with {self.up.returncode}; see {self.logs / 'up.log'}")
            found = re.search(r"API token:\s+(\S+)", (self.logs / "up.log").read_text(errors="replace"))
            return found.group(1) if found else None

        key = wait_for(token, 300, "manage.py up to print the API token", interval=0.5)
        wait_for(self.ready, 120, "/healthz/ready", interval=0.5)
        self.api = Api(self.url, key)
        pools = self.api.request("GET", "/api/v1/pools/", expect=200).json()
        pools = pools["results"] if isinstance(pools, dict) else pools
        self.pool_id = next(pool["id"] for pool in pools if pool["name"] == "local")
        # The bench reads the platform's database directly (locks, state versions, jobs).
        os.environ.update(env, IAC_EMBEDDED_SUPERVISED="1", DJANGO_SETTINGS_MODULE="iacplatform.settings")
        import django

        django.setup()

    def ready(self) -> bool:
        try:
            return requests.get(self.url + "/healthz/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> list[str]:
        """Ctrl-C, as a user stops `make run`; returns what is still running afterwards."""
        if self.up is None or self.up.poll() is not None:
            return []
        self.up.send_signal(signal.SIGINT)
        try:
            self.up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.up.pid, signal.SIGKILL)
        out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        left = [line.strip() for line in out.splitlines() if str(self.var) in line and "ps -eo" not in line]
        # The local backend's agents (detached, their args do not name the var dir): by marker.
        from agents_app.pods.local import running_agents

        left += [f"{pid} agent {name}" for name, pid in running_agents(self.var)]
        return left

    # supervisor
    def ctl(self, *args: str, check: bool = True) -> str:
        conf = self.var / "supervisor" / "supervisord.conf"
        out = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args],
                             capture_output=True, text=True, timeout=120)
        if check and out.returncode not in (0,) and "ERROR" in out.stdout + out.stderr:
            raise RuntimeError(f"supervisorctl {' '.join(args)}: {out.stdout}{out.stderr}")
        return out.stdout.strip()

    def pid(self, program: str) -> int:
        return int(wait_for(lambda: (p := self.ctl("pid", program, check=False)).isdigit() and int(p) > 0 and p,
                            60, f"{program} to run"))

    def sigkill(self, program: str) -> int:
        pid = self.pid(program)
        os.kill(pid, signal.SIGKILL)
        return pid

    # agents: pods of the local backend, started by the autoscaler (not supervisord programs)
    def sigkill_agent(self, agent_name: str) -> str:
        """SIGKILL the agent process named `agent_name` (a machine dying), found through its
        Pod: the local backend's backend id is the agent's pid. The reconciler then marks the
        pod gone and the autoscaler starts another. Returns what was killed, for the notes."""
        from agents_app.models import Pod

        pod = wait_for(lambda: Pod.objects.filter(name=agent_name).exclude(backend_id="").first(), 30,
                       f"the pod of agent {agent_name}")
        os.kill(int(pod.backend_id), signal.SIGKILL)
        return f"agent {agent_name} (pid {pod.backend_id})"

    # what terraform did
    def phases_of(self, task_id: int) -> list[Phase]:
        if not self.phases.exists():
            return []
        found = []
        for line in self.phases.read_text().splitlines():
            m = _PHASE.match(line)
            if not m:
                continue
            parts = Path(m.group(5)).parts
            try:
                agent, ws, task = parts[-3], int(parts[-2]), int(parts[-1])
            except (IndexError, ValueError):
                continue
            if task == task_id:
                found.append(Phase(float(m.group(1)), m.group(2), m.group(3), agent, ws, task, m.group(4)))
        return found

    def wait_phase(self, task_id: int, edge: str, phase: str, timeout: float = 90) -> Phase:
        def seen() -> Phase | None:
            return next((p for p in self.phases_of(task_id) if p.edge == edge and p.phase == phase), None)

        return wait_for(seen, timeout, f"run {task_id}: terraform {phase} {edge}", interval=0.05)


# --- scenarios -------------------------------------------------------------------------------


@dataclass
class Outcome:
    scenario: str
    runs: int = 0
    lost: int = 0
    double_applies: int = 0
    stuck: int = 0
    orphan_locks: int = 0
    out_of_order: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class Case:
    """One workspace of one scenario: its runs, what each may end as, and the checks."""

    def __init__(self, p: Platform, name: str) -> None:
        self.p = p
        self.api = p.api
        self.marker = SHARED / "markers" / f"{name}.log"
        self.marker.unlink(missing_ok=True)
        self.ws = self.api.create_workspace(name, p.pool_id, {"main.tf": MAIN_TF}, {"marker_file": str(self.marker)})
        self.expected: dict[int, set[str]] = {}
        self.final: dict[int, dict] = {}
        self.outcome = Outcome(name.rsplit("-", 1)[0])

    def queue(self, allowed: set[str] | None = None) -> int:
        run = self.api.request("POST", f"/api/v1/workspaces/{self.ws['id']}/runs/",
                               json={"operation": "plan_and_apply"}, expect=201).json()
        self.expected[run["id"]] = allowed or {"applied"}
        return run["id"]

    def run(self, run_id: int) -> dict:
        for _ in range(60):  # the web may be restarting: that is the fault, not a failure
            try:
                resp = self.api.s.get(f"{self.api.base}/api/v1/runs/{run_id}/", timeout=10)
                if resp.status_code == 200:
                    return resp.json()
            except requests.RequestException:
                pass
            time.sleep(1)
        raise RuntimeError(f"run {run_id}: the API did not answer for a minute")

    def wait(self, run_id: int, statuses: set[str], timeout: float = RUN_BOUND, **where: Any) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if run["status"] in statuses and all(run.get(k) == v for k, v in where.items()):
                return run
            if run["status"] in FINAL:
                return run
            time.sleep(0.2)
        return None

    def confirm(self, run_id: int) -> None:
        for _ in range(30):
            try:
                resp = self.api.s.post(f"{self.api.base}/api/v1/runs/{run_id}/confirm/", json={"comment": "fault suite"},
                                       timeout=10)
            except requests.RequestException:
                time.sleep(1)
                continue
            if resp.status_code == 200:
                return
            if resp.status_code in (409, 400):
                self.outcome.notes.append(f"run {run_id}: confirm answered {resp.status_code}: {resp.text[:200]}")
                return
            time.sleep(1)

    def drive(self, run_id: int) -> None:
        """Act as the user until the run ends: confirm it when it waits for confirmation."""
        deadline = time.monotonic() + RUN_BOUND
        confirmed = False
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if run["status"] in FINAL:
                self.final[run_id] = run
                return
            if run["status"] == "apply_pending" and not confirmed:
                self.confirm(run_id)
                confirmed = True
            time.sleep(0.2)
        self.final[run_id] = self.run(run_id)

    def finish(self) -> Outcome:
        """Drive every run to its end, then one more run that must apply; count."""
        for run_id in list(self.expected):
            self.drive(run_id)
        follow_up = self.queue({"applied"})
        self.drive(follow_up)
        self._count()
        return self.outcome

    def _count(self) -> None:
        from django.db import close_old_connections

        from tasks_app.models import StateLock, StateVersion

        o = self.outcome
        o.runs = len(self.expected)
        applied = 0
        for run_id, allowed in self.expected.items():
            run = self.final.get(run_id) or self.run(run_id)
            if run["status"] not in FINAL:
                o.stuck += 1
                o.notes.append(f"run {run_id} stuck in {run['status']}: {run.get('waiting_reason') or run['message']}")
            elif run["status"] not in allowed:
                o.lost += 1
                o.notes.append(f"run {run_id} ended {run['status']} (allowed: {sorted(allowed)}): {run['message']}")
            applied += run["status"] == "applied"
        # A double apply: `terraform apply` ran to success twice for one run (the wrapper's
        # phase log, per run dir). The marker terraform appends to must agree with it.
        completed = 0
        for run_id in self.expected:
            done = sum(1 for ph in self.p.phases_of(run_id) if ph.phase == "apply" and ph.edge == "end" and ph.detail == "0")
            completed += done
            if done > 1:
                o.double_applies += done - 1
                o.notes.append(f"run {run_id}: terraform apply completed {done} times")
        lines = self.marker.read_text().count("applied") if self.marker.exists() else 0
        if lines != completed:
            o.notes.append(f"the marker has {lines} applies, the phase log {completed} (an apply killed after its "
                           "local-exec, before terraform exited?)")
        if applied > completed:
            o.lost += applied - completed
            o.notes.append(f"{applied} runs say applied, terraform completed {completed} applies")
        close_old_connections()
        if StateLock.objects.filter(workspace_id=self.ws["id"]).exists():
            o.orphan_locks += 1
            o.notes.append("a state lock is still held")
        serials = list(StateVersion.objects.filter(workspace_id=self.ws["id"]).order_by("id").values_list("serial", flat=True))
        o.out_of_order += sum(1 for a, b in zip(serials, serials[1:], strict=False) if b <= a)


def agent_of_phase(p: Platform, case: Case, run_id: int, edge: str, phase: str) -> str:
    return p.wait_phase(run_id, edge, phase).agent


def kill_agent_at(edge: str, phase: str, delay: float = 0.3) -> Callable[[Platform, Case], None]:
    """SIGKILL the agent running the run's terraform `phase` (a machine dying): the plan is
    re-queued and still applies."""

    def scenario(p: Platform, case: Case) -> None:
        run_id = case.queue({"applied"})
        agent = agent_of_phase(p, case, run_id, edge, phase)
        time.sleep(delay)
        killed = p.sigkill_agent(agent)
        case.outcome.notes.append(f"killed {killed} at {phase} {edge}")

    return scenario


def kill_agent_apply_pending(p: Platform, case: Case) -> None:
    """SIGKILL the agent that holds the run's warm dir while the run waits for Confirm."""
    run_id = case.queue({"applied"})
    run = case.wait(run_id, {"apply_pending"}, warmup_status="ready")
    if run is None or run["status"] != "apply_pending":
        return
    killed = p.sigkill_agent(run["warmup_agent"])
    case.outcome.notes.append(f"killed {killed}, which held the warm dir")
    time.sleep(1)
    case.confirm(run_id)


def kill_agent_apply(p: Platform, case: Case) -> None:
    """SIGKILL the agent in the middle of terraform apply: an interrupted apply may have
    changed things, so it is never re-run automatically; the run errors and says so."""
    run_id = case.queue({"errored"})
    case.wait(run_id, {"apply_pending"})
    case.confirm(run_id)
    agent = agent_of_phase(p, case, run_id, "start", "apply")
    time.sleep(1)
    killed = p.sigkill_agent(agent)
    case.outcome.notes.append(f"killed {killed} during apply")


def kill_web_apply(p: Platform, case: Case) -> None:
    """SIGKILL Daphne while an apply runs: the agent's calls retry, the apply completes."""
    run_id = case.queue({"applied"})
    case.wait(run_id, {"apply_pending"})
    case.confirm(run_id)
    p.wait_phase(run_id, "start", "apply")
    time.sleep(0.5)
    p.sigkill("web")
    case.outcome.notes.append("killed web during apply")


def kill_worker(p: Platform, case: Case) -> None:
    """SIGKILL the Celery worker during a plan."""
    run_id = case.queue({"applied"})
    p.wait_phase(run_id, "start", "plan")
    p.sigkill("worker")
    case.outcome.notes.append("killed the worker during plan")


def redis_down(p: Platform, case: Case) -> None:
    """SIGKILL Redis and keep it down (the supervisor held off): a warm run is confirmed and
    a new one plans and applies while it is down; then the supervisor brings it back."""
    first = case.queue({"applied"})
    case.wait(first, {"apply_pending"}, warmup_status="ready")
    p.sigkill("redis")
    p.ctl("stop", "redis", check=False)  # hold the supervisor off (it may have restarted it already)
    down_at = time.monotonic()
    case.outcome.notes.append(f"redis down for {REDIS_DOWN}s")
    case.confirm(first)
    second = case.queue({"applied"})
    for run_id in (first, second):
        case.drive(run_id)
        if time.monotonic() - down_at > REDIS_DOWN:
            case.outcome.notes.append(f"run {run_id} ended only after Redis was back")
            case.outcome.lost += 1
    time.sleep(max(0.0, REDIS_DOWN - (time.monotonic() - down_at)))
    p.ctl("start", "redis")


def pg_restart(p: Platform, case: Case) -> None:
    """Restart PostgreSQL during a plan."""
    run_id = case.queue({"applied"})
    p.wait_phase(run_id, "start", "plan")
    p.ctl("restart", "postgres")
    case.outcome.notes.append("restarted postgres during plan")


SCENARIOS: dict[str, Callable[[Platform, Case], None]] = {
    "agent_init": kill_agent_at("start", "init"),
    "agent_plan": kill_agent_at("start", "plan", delay=SLOW_PHASE + 0.2),
    "agent_upload": kill_agent_at("end", "show", delay=0.0),
    "agent_apply_pending": kill_agent_apply_pending,
    "agent_apply": kill_agent_apply,
    "web_apply": kill_web_apply,
    "worker": kill_worker,
    "redis_down": redis_down,
    "pg_restart": pg_restart,
}


# --- report ----------------------------------------------------------------------------------

COUNTS = ("runs", "lost", "double_applies", "stuck", "orphan_locks", "out_of_order")


def table(outcomes: list[Outcome]) -> str:
    by: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by.setdefault(o.scenario, []).append(o)
    head = ["scenario", "n", *COUNTS, "median s"]
    rows = []
    for name, os_ in by.items():
        secs = sorted(o.seconds for o in os_)
        rows.append([name, str(len(os_)), *(str(sum(getattr(o, c) for o in os_)) for c in COUNTS),
                     f"{secs[len(secs) // 2]:.0f}"])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5, help="times each scenario runs (default 5)")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS)}")

    shutil.rmtree(VAR, ignore_errors=True)
    platform = Platform(VAR)
    outcomes: list[Outcome] = []
    left: list[str] = []
    started = time.monotonic()
    try:
        platform.start()
        total = len(names) * args.n
        for i in range(args.n):
            for name in names:
                say(f"==> [{len(outcomes) + 1}/{total}] {name} (round {i + 1}, {time.monotonic() - started:.0f}s in)")
                t0 = time.monotonic()
                case = Case(platform, f"{name}-{i + 1}")
                try:
                    SCENARIOS[name](platform, case)
                except Exception as exc:  # noqa: BLE001 - a scenario that could not inject its fault
                    case.outcome.notes.append(f"scenario error: {exc!r}")
                    case.outcome.lost += 1
                outcome = case.finish()
                outcome.seconds = time.monotonic() - t0
                outcomes.append(outcome)
                counts = " ".join(f"{c}={getattr(outcome, c)}" for c in COUNTS)
                say(f"    {counts} ({outcome.seconds:.0f}s) " + "; ".join(outcome.notes))
                if name == "redis_down":
                    wait_for(platform.ready, 60, "the platform to be ready again after Redis came back", interval=0.5)
    finally:
        left = platform.stop()
    say("")
    say(table(outcomes))
    if left:
        say(f"\nstill running after Ctrl-C: {left}")
    sums = {c: sum(getattr(o, c) for o in outcomes) for c in COUNTS}
    say(f"\nscenarios={len(outcomes)} " + " ".join(f"{c}={v}" for c, v in sums.items()) + f" leftovers={len(left)}")
    bad = any(v for c, v in sums.items() if c != "runs") or left or len(outcomes) < len(names) * args.n
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
