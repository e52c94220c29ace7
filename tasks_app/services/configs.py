"""Configuration versions: uploaded Terraform files, validated and stored as a normalised
.tar.gz. Everything is checked before anything is written: a bad archive leaves no row."""

from __future__ import annotations

import hashlib
import io
import posixpath
import tarfile
from typing import Any

from django.conf import settings

from iacplatform.errors import invalid_field
from tasks_app.models import ConfigurationVersion, Workspace

MAX_FILES = 2000


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


def _store(workspace: Workspace, entries: list[tuple[str, bytes]], actor: Any) -> ConfigurationVersion:
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
    )


def configuration_create_from_files(*, workspace: Workspace, files: Any, actor: Any) -> ConfigurationVersion:
    if not isinstance(files, dict) or not files:
        raise invalid_field("files", "must be a non-empty object mapping file names to their text")
    if len(files) > MAX_FILES:
        raise invalid_field("files", f"at most {MAX_FILES} files")
    entries = []
    for name, text in files.items():
        if not isinstance(text, str):
            raise invalid_field("files", f"the content of {name!r} must be a string")
        entries.append((_check_path(name), text.encode()))
    return _store(workspace, entries, actor)


def configuration_create_from_archive(*, workspace: Workspace, data: bytes, actor: Any) -> ConfigurationVersion:
    """Accept a .tar.gz. Rejects absolute paths, `..`, links that point outside, devices, and
    archives over the size limits (checked on the declared sizes before reading members)."""
    if len(data) > settings.IAC_MAX_CONFIG_BYTES:
        raise invalid_field("archive", f"archive is {len(data)} bytes; the limit is {settings.IAC_MAX_CONFIG_BYTES}")
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise invalid_field("archive", f"not a readable .tar.gz: {exc}") from exc
    if len(members) > MAX_FILES:
        raise invalid_field("archive", f"at most {MAX_FILES} entries")
    declared = 0
    regular = []
    for m in members:
        name = _check_path(m.name) if m.name not in (".", "./") else "."
        if m.issym() or m.islnk():
            target = m.linkname
            base = posixpath.dirname(name) if m.issym() else ""
            if target.startswith("/") or posixpath.normpath(posixpath.join(base, target)).startswith(".."):
                raise invalid_field("archive", f"link {m.name} points outside the configuration: {target}")
            raise invalid_field("archive", f"links are not supported in configurations: {m.name}")
        if m.isdir():
            continue
        if not m.isfile():
            raise invalid_field("archive", f"unsupported entry type for {m.name}")
        declared += m.size
        if declared > settings.IAC_MAX_CONFIG_BYTES:
            raise invalid_field("archive", f"unpacked size exceeds {settings.IAC_MAX_CONFIG_BYTES} bytes")
        regular.append((name, m))
    entries = []
    for name, m in regular:
        fh = tar.extractfile(m)
        entries.append((name, fh.read() if fh else b""))
    return _store(workspace, entries, actor)
