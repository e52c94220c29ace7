"""The agent's provider cache: an unpacked filesystem mirror that concurrent slots can share.

Layout (terraform's "unpacked" mirror layout, so `init` links to it instead of copying):
`<root>/<host>/<namespace>/<type>/<version>/<os_arch>/`. Beside it, never inside an entry
(an entry's files make its `h1:` hash): `.meta/<key>.json` (the entry's h1, size, last use),
`.locks/<key>.lock` and `.tmp/` for installs in progress.

Why not terraform's TF_PLUGIN_CACHE_DIR: several `init`s writing one plugin cache at once
race (terraform's tracker and those of Atlantis, OTF and Terrakube carry years of reports),
and inside the sandbox the cache must be read-only. So the agent installs into the cache
itself, outside the sandbox, before the job's `init`, which then only reads it:

- under a per-entry lock (a thread lock: the slots are threads of one process; and a file
  lock, for any other process that shares the root), so concurrent slots wait for the one
  install and then find it;
- into a temp dir, verified against the lock file's `h1:` (the unpacked files) and `zh:`
  (the zip) hashes, then renamed into place in one step: a reader sees no entry or a whole
  one, never a half-written file;
- from the agent's upstream (IAC_AGENT_PROVIDER_UPSTREAM): filesystem mirrors, packed (the
  registry's zips) or unpacked.

Eviction: past the size budget, least recently used entries that no running job leases are
deleted (a job leases the entries of its lock file for its whole life).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fasteners

log = logging.getLogger("iac.agent")

LOCK_FILE_NAME = ".terraform.lock.hcl"
_PROVIDER_BLOCK = re.compile(r'provider\s+"([^"]+)"\s*\{(.*?)\n\}', re.DOTALL)
_VERSION = re.compile(r'^\s*version\s*=\s*"([^"]+)"', re.MULTILINE)
_HASHES = re.compile(r'hashes\s*=\s*\[(.*?)\]', re.DOTALL)
_QUOTED = re.compile(r'"([^"]+)"')
DEFAULT_HOST = "registry.terraform.io"


def current_platform() -> str:
    """terraform's os_arch for this machine, e.g. linux_amd64."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i386": "386",
            "i686": "386"}.get(machine, machine)
    return f"{platform.system().lower()}_{arch}"


@dataclass(frozen=True)
class LockedProvider:
    """One `provider` block of a .terraform.lock.hcl."""

    address: str  # host/namespace/type
    version: str
    hashes: tuple[str, ...]

    @property
    def parts(self) -> tuple[str, str, str]:
        host, namespace, type_ = self.address.split("/")
        return host, namespace, type_

    def key(self, os_arch: str) -> str:
        return "_".join([*self.parts, self.version, os_arch])


def parse_lock_file(text: str) -> list[LockedProvider]:
    """The providers of a dependency lock file (terraform writes it; we read its fixed shape).
    Raises ValueError on a provider block without a version or with a malformed address."""
    providers = []
    for address, body in _PROVIDER_BLOCK.findall(text):
        version = _VERSION.search(body)
        if version is None:
            raise ValueError(f"lock file: provider {address} has no version")
        parts = address.split("/")
        if len(parts) == 2:
            parts = [DEFAULT_HOST, *parts]
        if len(parts) != 3 or not all(re.fullmatch(r"[A-Za-z0-9._-]+", p) for p in parts):
            raise ValueError(f"lock file: provider address {address!r} is not host/namespace/type")
        if not re.fullmatch(r"[A-Za-z0-9.+-]+", version.group(1)):
            raise ValueError(f"lock file: provider {address} has a malformed version")
        hashes = _HASHES.search(body)
        providers.append(LockedProvider("/".join(parts), version.group(1),
                                        tuple(_QUOTED.findall(hashes.group(1))) if hashes else ()))
    return providers


def read_lock_file(directory: Path) -> list[LockedProvider]:
    path = directory / LOCK_FILE_NAME
    return parse_lock_file(path.read_text()) if path.is_file() else []


def h1_dir(root: Path) -> str:
    """terraform's `h1:` hash of an unpacked provider package (Go's dirhash.Hash1): the sha256
    of the lines "<sha256 hex>  <relative path>\\n" of every file, sorted by path.
    Symlinks inside a package are followed, as terraform does when it hashes a directory."""
    names = []
    for dirpath, _dirs, files in os.walk(root, followlinks=True):
        for name in files:
            names.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    summary = hashlib.sha256()
    for name in sorted(names):
        summary.update(f"{sha256_file(root / name)}  {name}\n".encode())
    return "h1:" + base64.b64encode(summary.digest()).decode()


# h1_dir_checked's memory: (package dir, every file's identity) -> h1. Bounded.
_H1_SEEN: dict[tuple, str] = {}
_H1_SEEN_MAX = 256
_H1_LOCK = threading.Lock()


def _files_identity(root: Path) -> tuple:
    """Each file of the package (symlinks followed) with what any change to it changes:
    device, inode, size, mtime and ctime in ns. ctime cannot be set by a process (writing,
    renaming over, chmod or touching a file all set it to now), so user code that alters a
    provider binary in its warm dir, even restoring its size and mtime, changes this."""
    files = []
    for dirpath, _dirs, names in os.walk(root, followlinks=True):
        for name in names:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            files.append((os.path.relpath(path, root), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                          st.st_ctime_ns))
    return (str(root.resolve()), tuple(sorted(files)))


def h1_dir_checked(root: Path) -> str:
    """h1_dir, remembered while no file of the package changes (see _files_identity): a warm
    plan dir's provider, checked before every plan, is hashed once, not on each plan (a real
    provider is tens of MB: 25-40 ms a plan on the benchmark machine)."""
    key = _files_identity(root)
    with _H1_LOCK:
        known = _H1_SEEN.get(key)
    if known is not None:
        return known
    h1 = h1_dir(root)
    if _files_identity(root) == key:  # unchanged while it was hashed
        with _H1_LOCK:
            if len(_H1_SEEN) >= _H1_SEEN_MAX:
                _H1_SEEN.pop(next(iter(_H1_SEEN)))
            _H1_SEEN[key] = h1
    return h1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dir_size(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())


class ProviderUnavailable(Exception):
    """The upstream has no package for this provider, or its package fails the lock file's hashes."""


def unpack_zip(archive: Path, into: Path) -> None:
    """Unpack a provider zip, refusing entries that would land outside `into`; keeps the run
    bits the zip recorded (a provider binary must stay executable)."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            target = (into / info.filename).resolve()
            if into.resolve() not in target.parents:
                raise ProviderUnavailable(f"{archive.name}: entry {info.filename!r} escapes the package")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            mode = (info.external_attr >> 16) & 0o777
            target.chmod(mode or 0o644)


class ProviderCache:
    def __init__(self, root: Path, upstream: list[Path], budget_bytes: int, os_arch: str | None = None) -> None:
        self.root = root
        self.upstream = upstream
        self.budget_bytes = budget_bytes
        self.os_arch = os_arch or current_platform()
        for sub in (".meta", ".locks", ".tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for leftover in (root / ".tmp").iterdir():  # an install a killed process left
            shutil.rmtree(leftover, ignore_errors=True)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._leases: dict[str, int] = {}
        self.hits = 0
        self.misses = 0
        self.installs = 0

    # --- paths ------------------------------------------------------------------------------

    def entry_path(self, provider: LockedProvider) -> Path:
        return self.root.joinpath(*provider.parts, provider.version, self.os_arch)

    def _meta_path(self, key: str) -> Path:
        return self.root / ".meta" / f"{key}.json"

    @contextmanager
    def _entry_lock(self, key: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock, fasteners.InterProcessLock(str(self.root / ".locks" / f"{key}.lock")):
            yield

    def cli_config(self) -> str:
        """terraform's provider_installation: the cache first (an unpacked mirror: init links
        to it), then the upstream mirrors for what the agent could not install beforehand
        (a configuration without a lock file: init installs from upstream into the job's dir,
        and the agent promotes its lock file's providers into the cache afterwards)."""
        blocks = [f'  filesystem_mirror {{\n    path = "{self.root}"\n  }}\n']
        blocks += [f'  filesystem_mirror {{\n    path = "{p}"\n  }}\n' for p in self.upstream]
        return "provider_installation {\n" + "".join(blocks) + "}\n"

    # --- install ----------------------------------------------------------------------------

    def ensure(self, provider: LockedProvider) -> bool:
        """Make sure the cache holds `provider`, verified against its hashes. True: it was
        there (a hit); False: it was installed now (a miss). Raises ProviderUnavailable.
        Concurrent calls for one entry wait for the one install, then hit."""
        key = provider.key(self.os_arch)
        entry = self.entry_path(provider)
        with self._entry_lock(key):
            meta = self._read_meta(key)
            if entry.is_dir() and meta is not None:
                if not _matches(provider.hashes, meta.get("h1", ""), meta.get("zh", "")):
                    raise ProviderUnavailable(
                        f"{provider.address} {provider.version}: the cached package ({meta.get('h1')}) does not "
                        "match the lock file's hashes"
                    )
                self._touch(key, meta)
                with self._guard:
                    self.hits += 1
                return True
            self._install(provider, key, entry)
            with self._guard:
                self.misses += 1
                self.installs += 1
        self.evict()
        return False

    def _install(self, provider: LockedProvider, key: str, entry: Path) -> None:
        tmp = self.root / ".tmp" / f"{key}.{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            zh = ""
            source = self._find_upstream(provider)
            if source.suffix == ".zip":
                unpack_zip(source, tmp)
                zh = "zh:" + sha256_file(source)
            else:
                shutil.copytree(source, tmp, dirs_exist_ok=True, symlinks=False)
            h1 = h1_dir(tmp)
            if not _matches(provider.hashes, h1, zh):
                raise ProviderUnavailable(
                    f"{provider.address} {provider.version} from {source}: {h1} {zh} matches none of the lock "
                    f"file's hashes {list(provider.hashes)}"
                )
            for path in [tmp, *tmp.rglob("*")]:  # read-only for everyone: jobs only read it
                if path.is_dir():
                    path.chmod(0o755)
                elif path.is_file():
                    path.chmod(path.stat().st_mode & 0o555 or 0o444)
            if entry.exists():  # an entry without metadata: a crash between rename and meta
                shutil.rmtree(entry)
            entry.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, entry)  # atomic on one filesystem: no reader sees a partial entry
            self._write_meta(key, {"h1": h1, "zh": zh, "size": dir_size(entry), "last_used": time.time(),
                                   "path": str(entry.relative_to(self.root))})
            log.info("provider cache: installed %s %s (%s) from %s", provider.address, provider.version, h1, source)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _find_upstream(self, provider: LockedProvider) -> Path:
        host, namespace, type_ = provider.parts
        for mirror in self.upstream:
            packed = mirror / host / namespace / type_ / f"terraform-provider-{type_}_{provider.version}_{self.os_arch}.zip"
            if packed.is_file():
                return packed
            unpacked = mirror / host / namespace / type_ / provider.version / self.os_arch
            if unpacked.is_dir():
                return unpacked
        raise ProviderUnavailable(f"{provider.address} {provider.version} ({self.os_arch}) is in no upstream mirror "
                                  f"({', '.join(map(str, self.upstream)) or 'none configured'})")

    # --- leases and eviction -----------------------------------------------------------------

    def acquire(self, providers: list[LockedProvider]) -> None:
        """Keep these entries from eviction while a job uses them (until `release`)."""
        with self._guard:
            for key in (p.key(self.os_arch) for p in providers):
                self._leases[key] = self._leases.get(key, 0) + 1

    def release(self, providers: list[LockedProvider]) -> None:
        with self._guard:
            for key in (p.key(self.os_arch) for p in providers):
                if self._leases.get(key, 0) > 1:
                    self._leases[key] -= 1
                else:
                    self._leases.pop(key, None)

    @contextmanager
    def lease(self, providers: list[LockedProvider]) -> Iterator[None]:
        self.acquire(providers)
        try:
            yield
        finally:
            self.release(providers)

    def evict(self) -> list[str]:
        """Delete least recently used, unleased entries until the cache fits its budget."""
        entries = sorted(self._all_meta(), key=lambda km: km[1].get("last_used", 0))
        total = sum(m.get("size", 0) for _k, m in entries)
        evicted = []
        for key, meta in entries:
            if total <= self.budget_bytes:
                break
            with self._guard:
                if self._leases.get(key):
                    continue
            with self._entry_lock(key):
                with self._guard:
                    if self._leases.get(key):
                        continue
                entry = self.root / meta.get("path", "")
                if entry != self.root and self.root in entry.parents:
                    trash = self.root / ".tmp" / f"evicted.{key}.{uuid.uuid4().hex}"
                    if entry.exists():
                        os.rename(entry, trash)
                    shutil.rmtree(trash, ignore_errors=True)
                self._meta_path(key).unlink(missing_ok=True)
            total -= meta.get("size", 0)
            evicted.append(key)
            log.info("provider cache: evicted %s (least recently used; over the %d-byte budget)", key,
                     self.budget_bytes)
        return evicted

    # --- metadata and counters ---------------------------------------------------------------

    def _read_meta(self, key: str) -> dict | None:
        try:
            return json.loads(self._meta_path(key).read_text())
        except (OSError, ValueError):
            return None

    def _write_meta(self, key: str, meta: dict) -> None:
        path = self._meta_path(key)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(meta))
        tmp.replace(path)

    def _touch(self, key: str, meta: dict) -> None:
        meta["last_used"] = time.time()
        self._write_meta(key, meta)

    def _all_meta(self) -> list[tuple[str, dict]]:
        found = []
        for path in (self.root / ".meta").glob("*.json"):
            try:
                found.append((path.stem, json.loads(path.read_text())))
            except (OSError, ValueError):
                continue
        return found

    def stats(self) -> dict[str, int]:
        metas = self._all_meta()
        with self._guard:
            return {"size_bytes": sum(m.get("size", 0) for _k, m in metas), "entries": len(metas),
                    "hits": self.hits, "misses": self.misses, "installs": self.installs}

    def entry_h1(self, entry: Path) -> str | None:
        """The recorded h1 of the cache entry at `entry` (None: not an entry of this cache)."""
        try:
            rel = entry.relative_to(self.root)
        except ValueError:
            return None
        for _key, meta in self._all_meta():
            if meta.get("path") == str(rel):
                return meta.get("h1")
        return None


def _matches(expected: tuple[str, ...], h1: str, zh: str) -> bool:
    """With no hashes to check against (no lock file yet) anything from the upstream goes;
    otherwise the package must match one of the lock file's hashes of a scheme we can check."""
    checkable = [h for h in expected if h.startswith(("h1:", "zh:"))]
    if not checkable:
        return True
    return (bool(h1) and h1 in checkable) or (bool(zh) and zh in checkable)
