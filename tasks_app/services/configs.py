"""Configuration versions: uploaded Terraform files, validated and stored as a normalised
.tar.gz. Everything is checked before anything is written: a bad archive leaves no row."""

from __future__ import annotations

import gzip
import hashlib
import io
import posixpath
import tarfile
import zlib
from typing import Any, BinaryIO, NoReturn

from django.conf import settings

from iacplatform.errors import Conflict, invalid_field
from tasks_app.models import ConfigurationVersion, Workspace


def _check_path(name: str) -> str:
    if not name or "\x00" in name:
        raise invalid_field("files", f"invalid file name {name!r}")
    if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise invalid_field("files", f"absolute path not allowed: {name}")
    norm = posixpath.normpath(name.replace("\\", "/"))
    if norm == ".." or norm.startswith("../") or "/../" in f"/{norm}/":
        raise invalid_field("files", f"path escapes the configuration directory: {name}")
    return norm


def _check_terraform_present(names: list[str]) -> None:
    if not any(n.endswith(".tf") or n.endswith(".tf.json") for n in names):
        raise invalid_field("files", "no Terraform files (*.tf or *.tf.json) in the configuration")


def _pack(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in sorted(entries):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _store(workspace: Workspace, entries: list[tuple[str, bytes]], actor: Any, **fields: Any) -> ConfigurationVersion:
    names = [n for n, _ in entries]
    _check_terraform_present(names)
    total = sum(len(d) for _, d in entries)
    if total > settings.IAC_MAX_CONFIG_BYTES:
        raise invalid_field("files", f"configuration is {total} bytes; the limit is {settings.IAC_MAX_CONFIG_BYTES}")
    archive = _pack(entries)
    return ConfigurationVersion.objects.create(
        workspace=workspace,
        archive=archive,
        sha256=hashlib.sha256(archive).hexdigest(),
        size=len(archive),
        files=sorted(names),
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
        **fields,
    )


def configuration_create_from_commit(*, workspace: Workspace, entries: list[tuple[str, bytes]],
                                     **commit: Any) -> ConfigurationVersion:
    """A configuration made from a git commit (tasks_app/vcs/): `entries` already read through
    archive_read_entries' checks; `commit` names it (vcs_sha, vcs_branch, ..., speculative)."""
    return _store(workspace, entries, None, **commit)


# Terraform's own words when a workspace follows a repository (its cloud backend says them
# before it uploads anything; the platform says them too, for clients that do not).
VCS_APPLY_REFUSED = ("Apply not allowed for workspaces with a VCS connection: a workspace that is connected to a "
                     "VCS requires the VCS-driven workflow to ensure that the VCS remains the single source of truth")


def configuration_upload_allowed(workspace: Workspace, *, speculative: bool) -> None:
    """A workspace that follows a repository takes its configurations from git only; a
    speculative one (a plan of one's own files, never applied) is still allowed."""
    if workspace.vcs_connection_id is not None and not speculative:
        followed = workspace.vcs_repository or "a repository"
        raise Conflict(f"{VCS_APPLY_REFUSED}. Workspace '{workspace.name}' follows {followed}: "
                       "push to its branch instead")


def configuration_create_from_files(*, workspace: Workspace, files: Any, actor: Any,
                                    speculative: bool = False) -> ConfigurationVersion:
    configuration_upload_allowed(workspace, speculative=speculative)
    if not isinstance(files, dict) or not files:
        raise invalid_field("files", "must be a non-empty object mapping file names to their text")
    if len(files) > settings.IAC_MAX_CONFIG_FILES:
        raise invalid_field("files", f"too many files: at most {settings.IAC_MAX_CONFIG_FILES}")
    entries = []
    for name, text in files.items():
        if not isinstance(text, str):
            raise invalid_field("files", f"the content of {name!r} must be a string")
        entries.append((_check_path(name), text.encode()))
    return _store(workspace, entries, actor)


def _check_link(member: tarfile.TarInfo, name: str) -> NoReturn:
    """Links are refused; the message says whether this one would even have escaped."""
    target = member.linkname
    base = posixpath.dirname(name) if member.issym() else ""
    if target.startswith("/") or posixpath.normpath(posixpath.join(base, target)).startswith(".."):
        raise invalid_field("archive", f"link {member.name} points outside the configuration: {target}")
    raise invalid_field("archive", f"links are not supported in configurations: {member.name}")


class _CappedReader(io.RawIOBase):
    """The decompressed tar stream, refused once more than `limit` bytes come out of it. Tar
    headers (pax headers, GNU long names) are read whole into memory by tarfile, so the cap
    has to sit under tarfile, not only on the members' declared sizes."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        super().__init__()
        self._raw = raw
        self._limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        # Never ask for more than one byte past the cap: the refusal happens before the bytes
        # beyond it are decompressed.
        want = min(len(buffer), self._limit + 1 - self.count)
        chunk = self._raw.read(want) if want > 0 else b""
        self.count += len(chunk)
        if self.count > self._limit:
            raise invalid_field("archive", f"the archive unpacks to more than {self._limit} bytes")
        buffer[: len(chunk)] = chunk
        return len(chunk)


def stream_limit(max_files: int, max_bytes: int) -> int:
    """How many bytes the decompressed tar stream may have: the files' contents plus, per
    entry, a header, a long-name or pax header and their padding, plus tar's end blocks and
    its record padding."""
    return max_bytes + (max_files + 1) * 4 * tarfile.BLOCKSIZE + 2 * tarfile.RECORDSIZE


def archive_read_entries(stream: BinaryIO) -> list[tuple[str, bytes]]:
    """Read a decompressed tar stream member by member, checking each one as it arrives and
    stopping at the first limit: an archive of a million empty headers is refused after
    IAC_MAX_CONFIG_FILES of them, never materialised (tarfile's `getmembers()` would read them
    all first). Returns (normalised path, content) for the regular files."""
    max_files: int = settings.IAC_MAX_CONFIG_FILES
    max_bytes: int = settings.IAC_MAX_CONFIG_BYTES
    try:
        # Stream mode ("r|"): sequential reads only, so nothing behind the current member is kept.
        tar = tarfile.open(fileobj=stream, mode="r|")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise invalid_field("archive", f"not a readable .tar.gz: {exc}") from exc
    entries: list[tuple[str, bytes]] = []
    seen = 0
    declared = 0
    with tar:
        while True:
            try:
                member = tar.next()
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                raise invalid_field("archive", f"not a readable .tar.gz: {exc}") from exc
            if member is None:
                break
            # tarfile remembers every member it has read; a long archive would grow that list
            # without bound, and nothing here looks back.
            tar.members = []
            seen += 1
            if seen > max_files:
                raise invalid_field("archive", f"too many entries: at most {max_files}")
            name = _check_path(member.name) if member.name not in (".", "./") else "."
            if member.issym() or member.islnk():
                _check_link(member, name)
            if member.isdir():
                continue
            if not member.isfile():
                raise invalid_field("archive", f"unsupported entry type for {member.name}")
            declared += member.size
            if declared > max_bytes:
                raise invalid_field("archive", f"unpacked size exceeds {max_bytes} bytes")
            # In stream mode a member's data can only be read before the next header.
            fh = tar.extractfile(member)
            try:
                data = fh.read() if fh else b""
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                raise invalid_field("archive", f"not a readable .tar.gz: {exc}") from exc
            entries.append((name, data))
    return entries


def configuration_create_from_archive(*, workspace: Workspace, data: bytes, actor: Any,
                                      speculative: bool = False) -> ConfigurationVersion:
    """Accept a .tar.gz. Rejects absolute paths, `..`, links, devices, and archives over the
    limits: IAC_MAX_CONFIG_BYTES for the compressed body and again for the unpacked files,
    IAC_MAX_CONFIG_FILES entries. Every limit is checked while decompressing, so a bomb costs
    no more than the limits themselves."""
    configuration_upload_allowed(workspace, speculative=speculative)
    if len(data) > settings.IAC_MAX_CONFIG_BYTES:
        raise invalid_field("archive", f"archive is {len(data)} bytes; the limit is {settings.IAC_MAX_CONFIG_BYTES}")
    gz = gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb")
    capped = _CappedReader(gz, stream_limit(settings.IAC_MAX_CONFIG_FILES, settings.IAC_MAX_CONFIG_BYTES))
    entries = archive_read_entries(io.BufferedReader(capped))
    return _store(workspace, entries, actor)
