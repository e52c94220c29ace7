"""The agent process: register, heartbeat, claim jobs (long-poll), run up to N at once,
keep warm dirs, clean up old ones."""

from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from agents_app.agent.client import Client, ServerError
from agents_app.agent.jobs import JobRun, WarmDir

log = logging.getLogger("iac.agent")
VERSION = "0.1"


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
        apply_pending_ttl: float = 24 * 3600,
        finished_ttl: float = 3600,
    ) -> None:
        self.client = Client(server)
        self.pool_token = pool_token
        self.name = name
        self.work_root = work_root
        self.slots = slots
        self.terraform = terraform
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

    # --- registration ----------------------------------------------------------------------

    def reregister(self, seen_generation: int) -> None:
        """The server declared us gone. Both the heartbeat and the claim thread can learn
        that at once: only the first one registers again."""
        with self.register_lock:
            if self.generation == seen_generation:
                self.register()

    def register(self) -> None:
        """Register (again). Warm dirs do not outlive a registration: the server treats a
        returning process as a new agent, so whatever we held is wiped."""
        with self.lock:
            for job in self.running.values():
                job.cancel(force=True)
            self.running.clear()
            self.warm.clear()
            self.finished.clear()
            self.generation += 1
        if self.work_root.exists():
            shutil.rmtree(self.work_root, ignore_errors=True)
        self.work_root.mkdir(parents=True, exist_ok=True)
        delay = 0.5
        while not self.stopping.is_set():
            try:
                data = self.client.call(
                    "POST", "/agent/v1/register", token=self.pool_token, retries=0, timeout=10,
                    json={"name": self.name, "slots": self.slots, "version": VERSION},
                )
                break
            except ServerError as exc:
                if exc.status in (400, 401):
                    raise SystemExit(f"registration refused: {exc.detail}") from exc
                log.warning("registration failed (%s); retrying in %.1fs", exc, delay)
            except Exception as exc:  # noqa: BLE001 - server not up yet
                log.warning("server not reachable (%s); retrying in %.1fs", exc, delay)
            self.stopping.wait(delay)
            delay = min(delay * 2, 10)
        else:
            return
        self.client.token = data["token"]
        self.agent_id = data["agent_id"]
        self.heartbeat_interval = float(data["heartbeat_interval"])
        self.claim_wait = float(data["claim_wait"])
        log.info("registered as agent %s in pool %s (%d slots)", self.agent_id, data["pool"], self.slots)

    # --- warm dirs (called from job threads) -----------------------------------------------

    def add_warm(self, warm: WarmDir) -> None:
        with self.lock:
            self.warm[warm.task_id] = warm

    def take_warm(self, task_id: int) -> WarmDir | None:
        with self.lock:
            return self.warm.pop(task_id, None)

    def job_done(self, job: JobRun, keep: bool) -> None:
        with self.lock:
            self.running.pop(job.id, None)
            if not keep:
                warm = self.warm.get(job.task_id)
                if warm is not None and warm.path == job.dir:
                    del self.warm[job.task_id]
                self.finished[job.dir] = time.time()

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
                warm = [{"task": w.task_id, "plan_hash": w.plan_hash} for w in self.warm.values()]
                running = list(self.running)
            try:
                resp = self.client.call(
                    "POST", "/agent/v1/heartbeat", json={"warm_dirs": warm, "running_jobs": running},
                    retries=1, timeout=10,
                )
            except ServerError as exc:
                if exc.status == 410:
                    log.warning("server says we are gone (%s): registering again", exc.detail)
                    self.reregister(generation)
                else:
                    log.warning("heartbeat failed: %s", exc)
                continue
            except Exception as exc:  # noqa: BLE001
                log.warning("heartbeat failed: %s", exc)
                continue
            for item in resp.get("cancel", []):
                with self.lock:
                    job = self.running.get(item["id"])
                if job is not None:
                    job.cancel(force=bool(item.get("force")))
            self.housekeeping([int(t) for t in resp.get("release", [])])

    # --- claiming --------------------------------------------------------------------------

    def claim_loop(self) -> None:
        while not self.stopping.is_set():
            generation = self.generation
            try:
                payload: Any = self.client.call(
                    "POST", f"/agent/v1/claim?wait={self.claim_wait:g}", timeout=self.claim_wait + 15, retries=0,
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
            if payload is None:
                continue
            job = JobRun(self, payload)
            with self.lock:
                self.running[job.id] = job
            log.info("claimed %s job %s for run %s", job.kind, job.id, job.task_id)
            job.thread.start()

    def run(self) -> None:
        def stop(signum: int, frame: Any) -> None:
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
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
