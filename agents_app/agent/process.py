"""The agent process: register, heartbeat, claim jobs (long-poll), run up to N at once,
keep warm dirs, clean up old ones.

Identity across restarts: the agent credential (its token) is kept in the work root, and
the work root is held by a file lock for the life of the process. A restarted process
presents the credential and reports the warm dirs it finds on disk (each has a marker
file), so the server keeps its reservations and Confirm right after a restart still takes
the fast path. A second process cannot take the same work root while the first holds it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import fasteners

from agents_app.agent.client import Client, ServerError
from agents_app.agent.jobs import WARM_MARKER, JobRun, WarmDir
from agents_app.agent.sandbox import Sandbox, job_environment
from agents_app.agent.warmdirs import STORE_DIR, WarmPlans
from agents_app.protocol import (
    PROTOCOL_VERSION,
    CancelOrder,
    ClaimReply,
    Heartbeat,
    HeartbeatReply,
    JobPayload,
    ProviderCacheReport,
    Registration,
    RegistrationReply,
    WarmDirReport,
)

log = logging.getLogger("iac.agent")
VERSION = "0.2"
CREDENTIAL_FILE = ".agent-credential.json"
LOCK_FILE = ".agent.lock"


def terraform_version(terraform: str) -> str:
    """The version the terraform executable reports ("" when it cannot say)."""
    try:
        # The agent's allowlisted environment, as for every job: not its own (the pool token).
        out = subprocess.run([terraform, "version", "-json"], capture_output=True, timeout=60, check=True,
                             env=job_environment()).stdout
        return str(json.loads(out)["terraform_version"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        log.warning("could not read the terraform version of %s: %s", terraform, exc)
        return ""


class WorkRootBusy(SystemExit):
    pass


class AgentProcess:
    def __init__(
        self,
        *,
        server: str,
        pool_token: str,
        name: str,
        work_root: Path,
        slots: int,
        terraform: str,
        sandbox: Sandbox,
        apply_pending_ttl: float = 24 * 3600,
        finished_ttl: float = 3600,
        warm_plans: WarmPlans | None = None,
    ) -> None:
        self.client = Client(server)
        self.server = server.rstrip("/")
        self.pool_token = pool_token
        self.name = name
        self.work_root = work_root
        self.slots = slots
        self.terraform = terraform
        self.sandbox = sandbox
        # Warm plan dirs and the provider cache live in dot-dirs of the work root, which the
        # work root's cleanups leave alone (job dirs are <workspace id>/<task id>).
        self.warm_plans = warm_plans or WarmPlans(work_root / STORE_DIR, budget=0, cache=None)
        self.terraform_version = ""
        self.apply_pending_ttl = apply_pending_ttl
        self.finished_ttl = finished_ttl
        self.heartbeat_interval = 10.0
        self.claim_wait = 25.0
        self.agent_id = 0
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.running: dict[int, JobRun] = {}
        self.warm: dict[int, WarmDir] = {}
        self.finished: dict[Path, float] = {}  # dirs of finished tasks -> when they finished
        self.generation = 0  # bumps on re-registration
        self.register_lock = threading.Lock()
        self.root_lock: fasteners.InterProcessLock | None = None
        # Read by the health endpoints (agents_app/agent/health.py).
        self.last_answered = 0.0  # monotonic time of the last registration or heartbeat answered
        self.last_server_error = ""  # why the last registration or heartbeat failed; "" if it answered

    # --- the work root and the credential ----------------------------------------------------

    def lock_work_root(self) -> None:
        """Hold the work root for the life of the process (the OS drops the lock when the
        process dies, even by SIGKILL)."""
        self.work_root.mkdir(parents=True, exist_ok=True)
        # Job dirs hold plan files and state fragments: the agent's user only.
        self.work_root.chmod(0o700)
        self.root_lock = fasteners.InterProcessLock(str(self.work_root / LOCK_FILE))
        if not self.root_lock.acquire(blocking=False):
            raise WorkRootBusy(f"another agent process is using the work root {self.work_root}")

    def _credential_path(self) -> Path:
        return self.work_root / CREDENTIAL_FILE

    def load_credential(self) -> str:
        try:
            data = json.loads(self._credential_path().read_text())
        except (OSError, ValueError):
            return ""
        if data.get("server") != self.server or data.get("name") != self.name:
            return ""  # another server or another identity: start fresh
        return str(data.get("token", ""))

    def save_credential(self, token: str) -> None:
        path = self._credential_path()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"server": self.server, "name": self.name, "token": token}, fh)
        tmp.replace(path)

    def scan_warm_dirs(self) -> dict[int, WarmDir]:
        """Warm dirs a previous process of this agent left, by their marker files; every
        other dir under the work root is a finished or interrupted job's and goes."""
        found: dict[int, WarmDir] = {}
        for ws_dir in self.work_root.iterdir():
            if not ws_dir.is_dir() or ws_dir.name.startswith("."):
                continue
            for task_dir in ws_dir.iterdir():
                warm = WarmDir.load(task_dir) if (task_dir / WARM_MARKER).exists() else None
                if warm is not None and warm.task_id not in found:
                    found[warm.task_id] = warm
                else:
                    shutil.rmtree(task_dir, ignore_errors=True)
        return found

    def wipe_work_root(self) -> None:
        for child in self.work_root.iterdir():
            if child.name not in (LOCK_FILE, CREDENTIAL_FILE) and not child.name.startswith("."):
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)

    # --- registration ----------------------------------------------------------------------

    def reregister(self, seen_generation: int) -> None:
        """The server declared us gone. Both the heartbeat and the claim thread can learn
        that at once: only the first one registers again."""
        with self.register_lock:
            if self.generation == seen_generation:
                self.register(after_offline=True)

    def register(self, *, after_offline: bool = False) -> None:
        """Register, or register again. After being declared offline the server released
        everything this agent held, so the dirs go; after a restart (credential on disk) the
        warm dirs found on disk are reported and those the server still reserves stay."""
        with self.lock:
            for job in self.running.values():
                job.cancel(force=True)
            self.running.clear()
            self.warm.clear()
            self.finished.clear()
            self.generation += 1
        if after_offline:
            self.wipe_work_root()
        warm = self.scan_warm_dirs()
        credential = self.load_credential()
        registration = Registration(
            name=self.name, slots=self.slots, version=VERSION, protocol_version=PROTOCOL_VERSION,
            terraform_version=self.terraform_version, credential=credential,
            warm_dirs=[WarmDirReport(task=w.task_id, plan_hash=w.plan_hash) for w in warm.values()],
        )
        delay = 0.5
        while not self.stopping.is_set():
            try:
                data = self.client.call(
                    "POST", "/agent/v1/register", token=self.pool_token, retries=0, timeout=10,
                    json=registration.model_dump(mode="json"),
                )
                break
            except ServerError as exc:
                # 400 bad request or protocol, 401 bad pool token, 409 the name is taken by a
                # live agent: retrying cannot help, and never merging is the point.
                if exc.status in (400, 401, 409):
                    raise SystemExit(f"registration refused: {exc.detail}") from exc
                log.warning("registration failed (%s); retrying in %.1fs", exc, delay)
                self.last_server_error = f"registration failed: {exc}"
            except Exception as exc:  # noqa: BLE001 - server not up yet
                log.warning("server not reachable (%s); retrying in %.1fs", exc, delay)
                self.last_server_error = f"server not reachable: {exc}"
            self.stopping.wait(delay)
            delay = min(delay * 2, 10)
        else:
            return
        reply = RegistrationReply.model_validate(data)
        self.last_answered, self.last_server_error = time.monotonic(), ""
        self.save_credential(reply.token)
        if not reply.resumed:
            self.warm_plans.clear()  # warm plan dirs are keyed by workspace id: this server's only
        kept = {t: w for t, w in warm.items() if reply.resumed and t not in reply.release}
        for task_id, w in warm.items():
            if task_id not in kept:
                shutil.rmtree(w.path, ignore_errors=True)
        with self.lock:
            self.warm = kept
        self.client.token = reply.token
        self.agent_id = reply.agent_id
        self.heartbeat_interval = reply.heartbeat_interval
        self.claim_wait = reply.claim_wait
        log.info("registered as agent %s in pool %s (%d slots, terraform %s)%s", self.agent_id, reply.pool,
                 self.slots, self.terraform_version or "unknown",
                 f"; resumed with {len(kept)} warm dir(s)" if reply.resumed else "")

    # --- warm dirs (called from job threads) -----------------------------------------------

    def add_warm(self, warm: WarmDir) -> None:
        warm.save_marker()
        with self.lock:
            self.warm[warm.task_id] = warm

    def take_warm(self, task_id: int) -> WarmDir | None:
        with self.lock:
            warm = self.warm.pop(task_id, None)
        if warm is not None:
            (warm.path / WARM_MARKER).unlink(missing_ok=True)  # in use now; no longer warm
        return warm

    def job_done(self, job: JobRun, keep: bool) -> None:
        with self.lock:
            self.running.pop(job.id, None)
            if not keep:
                warm = self.warm.get(job.task_id)
                if warm is not None and warm.path == job.dir:
                    del self.warm[job.task_id]
                self.finished[job.dir] = time.time()
        if not keep:
            (job.dir / WARM_MARKER).unlink(missing_ok=True)

    # --- heartbeat + housekeeping ----------------------------------------------------------

    def housekeeping(self, release: list[int]) -> None:
        now = time.time()
        with self.lock:
            drop = [w for w in self.warm.values() if w.task_id in release or now - w.created_at > self.apply_pending_ttl]
            for w in drop:
                del self.warm[w.task_id]
            old = [p for p, t in self.finished.items() if now - t > self.finished_ttl]
            for p in old:
                del self.finished[p]
            busy = {j.dir for j in self.running.values()}
        for path in [w.path for w in drop] + old:
            if path not in busy:
                shutil.rmtree(path, ignore_errors=True)

    def heartbeat_loop(self) -> None:
        while not self.stopping.wait(self.heartbeat_interval):
            generation = self.generation
            with self.lock:
                warm_dirs = [WarmDirReport(task=w.task_id, plan_hash=w.plan_hash) for w in self.warm.values()]
                running = list(self.running)
            cache = self.warm_plans.stats()
            warm_version, warm_workspaces = self.warm_plans.snapshot()
            beat = Heartbeat(
                warm_dirs=warm_dirs, running_jobs=running,
                provider_cache=ProviderCacheReport(**cache) if cache is not None else None,
                warm_plan_workspaces=warm_workspaces, warm_plans_version=warm_version,
            )
            try:
                data = self.client.call(
                    "POST", "/agent/v1/heartbeat", json=beat.model_dump(mode="json"), retries=1, timeout=10,
                )
            except ServerError as exc:
                if exc.status == 410:
                    log.warning("server says we are gone (%s): registering again", exc.detail)
                    self.reregister(generation)
                else:
                    log.warning("heartbeat failed: %s", exc)
                    self.last_server_error = f"heartbeat failed: {exc}"
                continue
            except Exception as exc:  # noqa: BLE001
                log.warning("heartbeat failed: %s", exc)
                self.last_server_error = f"heartbeat failed: {exc}"
                continue
            self.last_answered, self.last_server_error = time.monotonic(), ""
            reply = HeartbeatReply.model_validate(data)
            self.obey(reply.cancel)
            self.housekeeping(reply.release)

    def obey(self, orders: list[CancelOrder]) -> None:
        """Stop the jobs the server says to stop. An order comes pushed through the claim
        long-poll the moment Cancel commits, and again in every heartbeat answer until the
        job ends (JobRun.cancel interrupts each terraform process once)."""
        for order in orders:
            with self.lock:
                job = self.running.get(order.id)
            if job is not None:
                log.info("cancel order for job %s%s", order.id, " (force)" if order.force else "")
                job.cancel(force=order.force, grace=order.grace)

    # --- claiming --------------------------------------------------------------------------

    def claim_loop(self) -> None:
        while not self.stopping.is_set():
            generation = self.generation
            with self.lock:
                free = max(1, self.slots - len(self.running))
            try:
                data: Any = self.client.call(
                    "POST", f"/agent/v1/claim?wait={self.claim_wait:g}&max={free}", timeout=self.claim_wait + 15,
                    retries=0,
                )
            except ServerError as exc:
                if exc.status == 410:
                    self.reregister(generation)
                else:
                    log.warning("claim failed: %s", exc)
                    self.stopping.wait(1)
                continue
            except Exception as exc:  # noqa: BLE001 - server restarting; back off briefly
                log.warning("claim failed: %s", exc)
                self.stopping.wait(1)
                continue
            if data is None:
                continue
            try:
                reply = ClaimReply.model_validate(data)
            except Exception:  # noqa: BLE001 - one bad answer must not end the claim loop
                # Jobs we cannot read are never reported in our heartbeats, so the server
                # takes them back after two heartbeats (agent_reports.agent_heartbeat).
                log.exception("unreadable claim answer; ignoring it")
                self.stopping.wait(1)
                continue
            self.start_jobs(reply.jobs)
            # After the jobs: an order may concern a job of this same answer.
            self.obey(reply.cancel)

    def start_jobs(self, payloads: list[JobPayload], via: str = "claimed", on_this_thread: bool = True) -> None:
        """Start the jobs of a claim's answer, or of a result's (FinishReply.jobs: an apply
        handed over with its plan's or warmup's result; see JobRun.start for the thread)."""
        for payload in payloads:
            try:
                job = JobRun(self, payload)
            except Exception:  # noqa: BLE001
                log.exception("cannot start job %s; ignoring it", getattr(payload, "id", "?"))
                continue
            with self.lock:
                self.running[job.id] = job
            log.info("%s %s job %s for run %s", via, job.kind, job.id, job.task_id)
            job.start(on_this_thread=on_this_thread)

    def run(self) -> None:
        def stop(signum: int, frame: Any) -> None:
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.lock_work_root()
        self.terraform_version = terraform_version(self.terraform)
        self.warm_plans.terraform_version = self.terraform_version
        self.register()
        threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True).start()
        claimer = threading.Thread(target=self.claim_loop, name="claim", daemon=True)
        claimer.start()
        self.stopping.wait()
        log.info("stopping: letting %d running job(s) end", len(self.running))
        with self.lock:
            jobs = list(self.running.values())
        for job in jobs:
            job.cancel(force=False)
        for job in jobs:
            job.thread.join(15)
