"""Warm plan dirs: a workspace's `init` output kept on the agent, so its next plan skips `init`.

After a plan or an apply that succeeded, the agent moves the job dir's `.terraform/` (the
providers, as links into the read-only provider cache, the modules, the backend's
settings) and `.terraform.lock.hcl` into `<work root>/.warm-plans/<workspace>/`: never a
plan file, state or anything else of the job dir. The sandbox never shows that store (it
shows a job only its own dir), and the next plan of that workspace on this agent moves the
tree back into its fresh job dir and runs `plan` without `init`, when every check passes:

- the same workspace (the store is keyed by workspace id: never shared between workspaces);
- the configuration's lock file, module sources/versions, backend block and provider
  requirements hash as they did at the `init` that made the tree (its fingerprint);
- the tree is exactly what `init` produced: a manifest of every path (file hashes, link
  targets) taken by the agent right after `init`, before any user code could run, is
  compared with the tree; a file planted by a `local-exec` (or changed, or removed) sends
  the plan cold;
- every provider package matches the lock file's hashes (`h1:`, recomputed), and a linked
  one lies in the agent's cache or upstream mirror.

Any mismatch: the tree is deleted and the plan runs cold, saying why. At most
IAC_AGENT_WARM_PLAN_DIRS trees are kept (least recently used go first).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import hcl2

from agents_app.agent.providers import (
    LOCK_FILE_NAME,
    LockedProvider,
    ProviderCache,
    ProviderUnavailable,
    current_platform,
    h1_dir_checked,
    parse_lock_file,
    read_lock_file,
    sha256_file,
)
from agents_app.protocol import PlanStart

log = logging.getLogger("iac.agent")

STORE_DIR = ".warm-plans"
TF_DIR = ".terraform"
MAX_LOCAL_MODULE_DEPTH = 20
MAX_RECORDS = 500

# Why a fingerprint part differs, as the run page says it.
CHANGED = {
    "lock": "the lock file (.terraform.lock.hcl) changed",
    "modules": "module sources or versions changed",
    "backend": "the backend block changed",
    "providers": "the provider requirements changed",
    "terraform": "the agent's terraform version changed",
}


class JobLike(Protocol):
    dir: Path
    kind: str
    payload: Any
    log: Any

    def terraform(self, *args: str, **kw: Any) -> int: ...


@dataclass(frozen=True)
class StartDecision:
    warm: bool
    reason: str

    @property
    def kind(self) -> PlanStart:
        return PlanStart.WARM if self.warm else PlanStart.COLD


# --- the configuration's fingerprint ------------------------------------------------------


def _sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _module_dir_blocks(directory: Path) -> list[dict]:
    """The parsed top-level blocks of a module dir's .tf and .tf.json files (what terraform
    reads), in a stable order. Raises ValueError when a file cannot be parsed."""
    parsed = []
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        try:
            if path.name.endswith(".tf.json"):
                parsed.append(json.loads(path.read_text()))
            elif path.name.endswith(".tf"):
                parsed.append(hcl2.loads(path.read_text()))
        except Exception as exc:  # noqa: BLE001 - the parser's errors are many types
            raise ValueError(f"{path.name} could not be read ({type(exc).__name__})") from exc
    return parsed


def _unquote(value: Any) -> Any:
    return value.strip('"') if isinstance(value, str) else value


def config_fingerprint(job_dir: Path, terraform_version: str = "") -> dict[str, str]:
    """Hashes of what `init` depends on: the lock file, the module calls (source, version) of
    the root module and of every local module it calls, the backend/cloud blocks and the
    provider requirements. Raises ValueError when a file cannot be parsed."""
    modules: list[Any] = []
    backend: list[Any] = []
    providers: list[Any] = []
    seen: set[Path] = set()
    root = job_dir.resolve()
    todo = [(root, 0)]
    while todo:
        directory, depth = todo.pop()
        if directory in seen or depth > MAX_LOCAL_MODULE_DEPTH:
            continue
        seen.add(directory)
        rel = str(directory.relative_to(root)) if directory != root else "."
        for blocks in _module_dir_blocks(directory):
            for block in blocks.get("terraform", []) or []:
                if block.get("backend") or block.get("cloud"):
                    backend.append([rel, block.get("backend"), block.get("cloud")])
                if block.get("required_providers") or block.get("required_version"):
                    providers.append([rel, block.get("required_providers"), block.get("required_version")])
            for call in blocks.get("module", []) or []:
                for name, body in call.items():
                    source, version = _unquote(body.get("source")), _unquote(body.get("version"))
                    modules.append([rel, _unquote(name), source, version])
                    if isinstance(source, str) and source.startswith(("./", "../")):
                        local = (directory / source).resolve()
                        if (local == root or root in local.parents) and local.is_dir():
                            todo.append((local, depth + 1))
    lock = job_dir / LOCK_FILE_NAME
    return {
        "lock": sha256_file(lock) if lock.is_file() else "none",
        "modules": _sha(sorted(modules, key=str)),
        "backend": _sha(sorted(backend, key=str)),
        "providers": _sha(sorted(providers, key=str)),
        "terraform": terraform_version,
    }


# --- the manifest of `init`'s output ------------------------------------------------------


def manifest_of(directory: Path) -> dict[str, str]:
    """Every path of `.terraform/` (and the lock file) in `directory`: "d" for a dir,
    "l:<target>" for a link (not followed), "f:<mode>:<sha256>" for a file. Anything else
    (a fifo, a device) is recorded as such and never matches a dir init produced."""
    entries: dict[str, str] = {}
    lock = directory / LOCK_FILE_NAME
    if lock.is_file() and not lock.is_symlink():
        entries[LOCK_FILE_NAME] = f"f:{lock.stat().st_mode & 0o777:o}:{sha256_file(lock)}"
    elif lock.exists() or lock.is_symlink():
        entries[LOCK_FILE_NAME] = "other"
    top = directory / TF_DIR
    if not top.exists() and not top.is_symlink():
        return entries
    if top.is_symlink() or not top.is_dir():
        entries[TF_DIR] = "other"
        return entries
    entries[TF_DIR] = "d"
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(directory))
            if path.is_symlink():
                entries[rel] = "l:" + os.readlink(path)
            elif path.is_dir():
                entries[rel] = "d"
            elif path.is_file():
                entries[rel] = f"f:{path.stat().st_mode & 0o777:o}:{sha256_file(path)}"
            else:
                entries[rel] = "other"
        # os.walk does not descend into links to dirs (followlinks=False): they are recorded
        # as links above, and their targets are checked against the lock file's hashes.
    return entries


def manifest_difference(recorded: dict[str, str], actual: dict[str, str]) -> str:
    """"" when equal, else the first difference in words."""
    for path in sorted(set(actual) - set(recorded)):
        return f"{path} was not produced by init (added after it)"
    for path in sorted(set(recorded) - set(actual)):
        return f"{path} produced by init is missing"
    for path in sorted(recorded):
        if recorded[path] != actual[path]:
            return f"{path} changed after init"
    return ""


def providers_difference(directory: Path, locked: list[LockedProvider], os_arch: str,
                         allowed_roots: list[Path]) -> str:
    """"" when every locked provider in `directory/.terraform/providers` matches one of the
    lock file's hashes (recomputed) and a linked package lies under `allowed_roots`."""
    for provider in locked:
        package = directory.joinpath(TF_DIR, "providers", *provider.parts, provider.version, os_arch)
        if not package.exists():
            return f"provider {provider.address} {provider.version} is missing from {TF_DIR}"
        if package.is_symlink():
            target = package.resolve()
            if not any(target == r or r in target.parents for r in allowed_roots):
                return f"provider {provider.address} {provider.version} links outside the agent's provider cache"
        checkable = [h for h in provider.hashes if h.startswith("h1:")]
        if checkable and h1_dir_checked(package) not in checkable:
            return f"provider {provider.address} {provider.version} does not match the lock file's hashes"
    return ""


# --- the store ----------------------------------------------------------------------------


class WarmPlans:
    """The agent's warm plan dirs and its provider cache (None: no cache configured)."""

    def __init__(self, root: Path, budget: int, cache: ProviderCache | None, terraform_version: str = "",
                 upstream: list[Path] | None = None) -> None:
        self.root = root
        self.budget = budget
        self.cache = cache
        self.terraform_version = terraform_version
        self.upstream = upstream or []
        self.lock = threading.Lock()
        # Fingerprint and manifest of each job dir `init` ran in (or a warm tree was restored
        # into), by path: the plan's dir is applied later by another JobRun.
        self.records: dict[Path, tuple[dict[str, str], dict[str, str]]] = {}
        self.index: dict[int, float] = {}  # workspace -> last used
        # Bumped with every change of `index` (under the lock): the server keeps the list of
        # the newest version it was sent, so a heartbeat built before a plan kept its dir
        # cannot overwrite, arriving after, the list that plan's result sent.
        self.version = 0
        # The cache entries each running job uses (by job dir), released when it ends.
        self.leases: dict[Path, list[LockedProvider]] = {}
        # Fingerprints by (configuration archive sha256, terraform version): a job dir holds
        # the (verified) archive and the agent's constant backend override when start() reads
        # it, so the same archive always gives the same fingerprint; parsing HCL took a few
        # milliseconds on every plan.
        self.fingerprints: OrderedDict[tuple[str, str], dict[str, str]] = OrderedDict()
        self.reused = 0
        self.kept = 0
        root.mkdir(parents=True, exist_ok=True)
        for child in root.iterdir():
            if child.name.startswith(".tmp-"):
                shutil.rmtree(child, ignore_errors=True)
            elif child.suffix == ".json" and child.stem.isdigit() and (root / child.stem).is_dir():
                try:
                    self.index[int(child.stem)] = float(json.loads(child.read_text()).get("last_used", 0))
                except (OSError, ValueError):
                    child.unlink(missing_ok=True)

    def workspaces(self) -> list[int]:
        return self.snapshot()[1]

    def snapshot(self) -> tuple[int, list[int]]:
        """The version of the warm plan dirs' list, and the list (workspace ids)."""
        with self.lock:
            return self.version, sorted(self.index)

    # --- the job's start ------------------------------------------------------------------

    def start(self, job: JobLike) -> StartDecision:
        """Get the job dir (configuration in place) ready to plan/apply: providers into the
        cache, then a warm tree (plans only) or `init`. Records what init produced."""
        try:
            fingerprint: dict[str, str] | None = self._fingerprint(job)
            fingerprint_error = ""
        except (ValueError, OSError) as exc:
            fingerprint, fingerprint_error = None, str(exc)
        self._providers_into_cache(job, promote=False)
        workspace = int(job.payload.task.workspace)
        if job.kind == "plan":
            checking = time.monotonic()
            why_cold = self._reuse(job, workspace, fingerprint, fingerprint_error)
            if not why_cold:
                job.log.write(f"\n[warm plan dir: this workspace's init output on this agent, checked in "
                              f"{(time.monotonic() - checking) * 1000:.0f} ms: no init]\n")
                return StartDecision(True, "this workspace's init output on this agent: lock file, modules, backend "
                                       "and providers unchanged")
        else:
            why_cold = f"{job.kind} jobs run init"
        had_lock_file = (job.dir / LOCK_FILE_NAME).is_file()
        job.terraform("init", "-input=false")
        if not had_lock_file:  # the providers init just installed from upstream, for the next job
            self._providers_into_cache(job, promote=True)
        if fingerprint is not None:
            self._record(job.dir, fingerprint, manifest_of(job.dir))
        return StartDecision(False, why_cold)

    def _fingerprint(self, job: JobLike) -> dict[str, str]:
        archive = getattr(job.payload, "configuration_sha256", "")
        if not archive:
            return config_fingerprint(job.dir, self.terraform_version)
        key = (archive, self.terraform_version)
        with self.lock:
            if key in self.fingerprints:
                self.fingerprints.move_to_end(key)
                return dict(self.fingerprints[key])
        fingerprint = config_fingerprint(job.dir, self.terraform_version)
        with self.lock:
            self.fingerprints[key] = dict(fingerprint)
            while len(self.fingerprints) > MAX_RECORDS:
                self.fingerprints.popitem(last=False)
        return fingerprint

    def _providers_into_cache(self, job: JobLike, *, promote: bool) -> None:
        """Install the lock file's providers into the cache (before init: the configuration's
        own lock file; after a cold init without one: the lock file init wrote, so the next
        job finds them). A provider the cache cannot get is left to init (it says why)."""
        if self.cache is None:
            return
        try:
            locked = read_lock_file(job.dir)
        except (ValueError, OSError) as exc:
            job.log.write(f"[provider cache: the lock file could not be read ({exc}); init decides]\n")
            return
        with self.lock:
            leased = self.leases.setdefault(job.dir, [])
        fresh = [p for p in locked if p not in leased]
        self.cache.acquire(fresh)  # kept from eviction until the job ends (finished)
        leased.extend(fresh)
        for provider in locked:
            try:
                hit = self.cache.ensure(provider)
            except (ProviderUnavailable, OSError) as exc:
                job.log.write(f"[provider cache: {exc}]\n")
                continue
            if not promote or not hit:
                what = "hit" if hit else "installed (miss)"
                job.log.write(f"[provider cache: {provider.address} {provider.version} {what}]\n")

    def _record(self, directory: Path, fingerprint: dict[str, str], manifest: dict[str, str]) -> None:
        with self.lock:
            self.records[directory] = (fingerprint, manifest)
            while len(self.records) > MAX_RECORDS:
                self.records.pop(next(iter(self.records)))

    def _allowed_roots(self) -> list[Path]:
        return [p.resolve() for p in ([self.cache.root] if self.cache else []) + self.upstream]

    def _reuse(self, job: JobLike, workspace: int, fingerprint: dict[str, str] | None, fingerprint_error: str) -> str:
        """Move the workspace's warm tree into the job dir when every check passes: "" then,
        else why the plan runs cold (the tree is deleted)."""
        if self.budget <= 0:
            return "warm plan dirs are off on this agent (IAC_AGENT_WARM_PLAN_DIRS=0)"
        taken = self._take(workspace)
        if taken is None:
            return "no warm plan dir of this workspace on this agent"
        tree, meta = taken
        try:
            if fingerprint is None:
                return f"the configuration could not be read to compare it ({fingerprint_error})"
            for part, reason in CHANGED.items():
                if meta["fingerprint"].get(part) != fingerprint.get(part):
                    return reason
            difference = manifest_difference(meta["manifest"], manifest_of(tree))
            if difference:
                return f"the warm plan dir is not as init left it: {difference}"
            # No lock file: init installed no provider (only terraform's built-in one), and
            # the manifest check above proved there is none now either.
            lock_file = tree / LOCK_FILE_NAME
            locked = parse_lock_file(lock_file.read_text()) if lock_file.is_file() else []
            os_arch = self.cache.os_arch if self.cache else current_platform()
            difference = providers_difference(tree, locked, os_arch, self._allowed_roots())
            if difference:
                return difference
            os.rename(tree / TF_DIR, job.dir / TF_DIR)
            if lock_file.is_file():
                os.replace(lock_file, job.dir / LOCK_FILE_NAME)
        except (OSError, ValueError, KeyError) as exc:
            return f"the warm plan dir could not be checked ({exc})"
        finally:
            shutil.rmtree(tree, ignore_errors=True)
        self._record(job.dir, meta["fingerprint"], meta["manifest"])
        with self.lock:
            self.reused += 1
        return ""

    def _take(self, workspace: int) -> tuple[Path, dict] | None:
        """The workspace's tree, moved aside for this job alone (a concurrent plan of the
        same workspace finds none and runs cold)."""
        with self.lock:
            if self.index.pop(workspace, None) is None:
                return None
            self.version += 1
            src, meta_path = self.root / str(workspace), self.root / f"{workspace}.json"
            taken = self.root / f".tmp-{uuid.uuid4().hex}"
            try:
                meta = json.loads(meta_path.read_text())
                os.rename(src, taken)
            except (OSError, ValueError):
                shutil.rmtree(src, ignore_errors=True)
                return None
            finally:
                meta_path.unlink(missing_ok=True)
        return taken, meta

    # --- the job's end ----------------------------------------------------------------------

    def keep(self, job_dir: Path, workspace: int) -> bool:
        """Keep the init output of a job that succeeded in `job_dir` as the workspace's warm
        tree (replacing an older one). Only a dir whose init this agent recorded."""
        with self.lock:
            record = self.records.pop(job_dir, None)
        if self.budget <= 0 or record is None or not (job_dir / TF_DIR).is_dir():
            return False
        fingerprint, manifest = record
        staging = self.root / f".tmp-{uuid.uuid4().hex}"
        try:
            staging.mkdir()
            os.rename(job_dir / TF_DIR, staging / TF_DIR)
            if (job_dir / LOCK_FILE_NAME).is_file():
                os.rename(job_dir / LOCK_FILE_NAME, staging / LOCK_FILE_NAME)
            meta = {"workspace": workspace, "fingerprint": fingerprint, "manifest": manifest,
                    "last_used": time.time()}
            with self.lock:
                old = self.root / str(workspace)
                if old.exists():
                    shutil.rmtree(old, ignore_errors=True)
                os.rename(staging, old)
                (self.root / f"{workspace}.json").write_text(json.dumps(meta))
                self.index[workspace] = meta["last_used"]
                self.version += 1
                self.kept += 1
                evict = sorted(self.index, key=self.index.__getitem__)[: max(0, len(self.index) - self.budget)]
                for ws in evict:
                    del self.index[ws]
                    (self.root / f"{ws}.json").unlink(missing_ok=True)
                    shutil.rmtree(self.root / str(ws), ignore_errors=True)
        except OSError as exc:
            log.warning("could not keep the warm plan dir of workspace %s: %s", workspace, exc)
            shutil.rmtree(staging, ignore_errors=True)
            return False
        return True

    def finished(self, job_dir: Path, workspace: int, *, keep: bool, reserved: bool = False) -> bool:
        """A job in `job_dir` ended. A dir `reserved` for the run's apply keeps its cache
        leases (the apply runs there without init; they go when it ends). Otherwise the
        leases go and, with `keep` (the job succeeded), the init output becomes the
        workspace's warm tree."""
        if reserved:
            return False
        with self.lock:
            leased = self.leases.pop(job_dir, [])
        if self.cache is not None:
            self.cache.release(leased)
        if keep:
            return self.keep(job_dir, workspace)
        with self.lock:
            self.records.pop(job_dir, None)
        return False

    def clear(self) -> None:
        """Delete every warm tree: the agent registered as a new agent (another server, or
        its identity was lost), and workspace ids are only unique on one server."""
        with self.lock:
            workspaces = list(self.index)
            self.index.clear()
            self.version += 1
            for ws in workspaces:
                (self.root / f"{ws}.json").unlink(missing_ok=True)
                shutil.rmtree(self.root / str(ws), ignore_errors=True)

    def stats(self) -> dict[str, int] | None:
        return self.cache.stats() if self.cache is not None else None
