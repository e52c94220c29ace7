"""Git itself, through the git CLI, on the server (the worker): fetch one commit shallowly,
archive its working directory through the same limits as an upload, diff two commits'
trees, ls-remote a branch. The repository is hostile: git runs with no system or user
config of this host (HOME is a fresh temporary dir), no prompts, only the https/ssh (and,
where allowed, http) transports, no hooks and no submodules; the credential reaches git only
through the environment (never argv, which `ps` shows) and, for ssh, a 0600 key file that is
deleted with the temporary dir. Nothing is run from the repository's files."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from iacplatform.errors import Invalid, PlatformError
from tasks_app.services.configs import _CappedReader, archive_read_entries, stream_limit
from tasks_app.vcs import github_app
from tasks_app.vcs.models import VcsConnection, VcsKind
from tasks_app.vcs.urls_check import SCP_LIKE, api_url, check_url

SHA = frozenset("0123456789abcdef")


class GitError(PlatformError):
    """git failed (the server, the network, the credential): worth another try later."""

    status = 502


def clone_url(connection: VcsConnection, repository: str) -> str:
    """The URL a workspace's repository is fetched from: the connection's URL and the
    repository path (never a URL out of a webhook body)."""
    base = connection.url.rstrip("/")
    if connection.kind == VcsKind.GIT and not repository:
        url = base
    else:
        path = repository.strip("/")
        if connection.kind != VcsKind.GIT and not path.endswith(".git"):
            path += ".git"
        url = f"{base}{'' if SCP_LIKE.match(base) and base.endswith(':') else '/'}{path}"
    return check_url(url, field="repository", schemes=("https", "ssh"))


def checked_sha(sha: str) -> str:
    if not isinstance(sha, str) or len(sha) not in (40, 64) or not set(sha) <= SHA:
        raise Invalid(f"not a commit id: {str(sha)[:80]!r}")
    return sha


_USERS = {VcsKind.GITHUB: "x-access-token", VcsKind.GITLAB: "oauth2", VcsKind.GIT: "git"}


def _token(connection: VcsConnection) -> str:
    """The password git sends: the connection's token, or a GitHub App installation's access
    token (GitHub documents `x-access-token` as its user name)."""
    if not connection.uses_github_app:
        return connection.token
    try:
        return github_app.installation_token(connection, api_url(connection))
    except github_app.GitHubAppError as exc:
        raise GitError(str(exc)) from exc


@contextmanager
def git_dir(connection: VcsConnection) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh empty repository and the environment git runs with inside it."""
    with tempfile.TemporaryDirectory(prefix="iac-git-") as tmp:
        root = Path(tmp)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root), "XDG_CONFIG_HOME": str(root), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false",
            "GIT_ALLOW_PROTOCOL": "https:ssh" + (":http" if settings.IAC_VCS_ALLOW_LOCAL_HOSTS else ""),
            "LC_ALL": "C",
        }
        config = [("core.hooksPath", "/dev/null"), ("protocol.version", "2"), ("fetch.recurseSubmodules", "false")]
        token = _token(connection)
        if token:
            basic = base64.b64encode(f"{_USERS[VcsKind(connection.kind)]}:{token}".encode()).decode()
            config.append(("http.extraHeader", f"Authorization: Basic {basic}"))
        key = connection.ssh_key
        if key:
            key_file = root / "deploy_key"
            key_file.touch(mode=0o600)
            key_file.write_text(key if key.endswith("\n") else key + "\n")
            known = root / "known_hosts"
            env["GIT_SSH_COMMAND"] = (f"ssh -i {key_file} -o IdentitiesOnly=yes -o BatchMode=yes "
                                      f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=accept-new")
        env["GIT_CONFIG_COUNT"] = str(len(config))
        for i, (k, v) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{i}"] = k
            env[f"GIT_CONFIG_VALUE_{i}"] = v
        repo = root / "repo"
        _run(["git", "init", "-q", "--bare", str(repo)], env=env, cwd=root)
        yield repo, env


def _run(args: list[str], *, env: dict[str, str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=settings.IAC_VCS_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired as exc:
        raise GitError(f"git {args[1]} took longer than {settings.IAC_VCS_TIMEOUT_SECONDS}s") from exc
    if check and done.returncode != 0:
        raise GitError(f"git {args[1]} failed: {_last_line(done.stderr)}")
    return done


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no message"


@dataclass(frozen=True)
class Commit:
    sha: str
    message: str
    author: str
    fetched_by: str  # "sha" or "branch"


def fetch_commit(repo: Path, env: dict[str, str], *, url: str, sha: str, branch: str) -> Commit:
    """Fetch `sha` alone, shallow (protocol v2 servers, GitHub and GitLab serve any commit
    by id). A server that refuses a commit by id (protocol v0 servers without
    uploadpack.allowReachableSHA1InWant) gets a shallow fetch of the branch, in which the
    commit must be found: which of the two happened is recorded on the configuration."""
    checked_sha(sha)
    fetched_by = "sha"
    done = _run(["git", "fetch", "-q", "--no-tags", "--depth=1", url, sha], env=env, cwd=repo, check=False)
    if done.returncode != 0:
        if not branch:
            raise GitError(f"git fetch of {sha[:12]} failed: {_last_line(done.stderr)}")
        fetched_by = "branch"
        _run(["git", "fetch", "-q", "--no-tags", "--depth=50", url, f"refs/heads/{branch}"], env=env, cwd=repo)
        if _run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], env=env, cwd=repo, check=False).returncode != 0:
            raise GitError(f"commit {sha[:12]} is not among the last 50 commits of branch {branch}")
    shown = _run(["git", "log", "-1", "--format=%an%x00%B", sha], env=env, cwd=repo).stdout
    author, _, message = shown.partition("\x00")
    return Commit(sha=sha, message=message.strip()[:10000], author=author.strip()[:200], fetched_by=fetched_by)


def archive_entries(repo: Path, env: dict[str, str], *, sha: str, directory: str) -> list[tuple[str, bytes]]:
    """The files of `directory` at `sha`, read through the upload's checks and limits
    (services/configs.py: no links, no paths out, IAC_MAX_CONFIG_FILES / _BYTES while reading)."""
    tree = f"{sha}:{directory.strip('/')}" if directory.strip("/") else sha
    if _run(["git", "cat-file", "-e", tree], env=env, cwd=repo, check=False).returncode != 0:
        raise Invalid(f"the commit {sha[:12]} has no directory '{directory}'")
    proc = subprocess.Popen(["git", "archive", "--format=tar", tree], env=env, cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        capped = _CappedReader(proc.stdout, stream_limit(settings.IAC_MAX_CONFIG_FILES, settings.IAC_MAX_CONFIG_BYTES))
        return archive_read_entries(io.BufferedReader(capped))
    finally:
        proc.kill()
        proc.wait()


def changed_files(repo: Path, env: dict[str, str], *, url: str, old: str, new: str) -> set[str] | None:
    """Paths that differ between two commits' trees (both fetched shallow); None when the
    old commit cannot be had (the branch was rewritten): then every path counts as changed."""
    checked_sha(old)
    if _run(["git", "fetch", "-q", "--no-tags", "--depth=1", url, old], env=env, cwd=repo, check=False).returncode:
        return None
    out = _run(["git", "diff", "--name-only", "--no-renames", "-z", old, new], env=env, cwd=repo).stdout
    return {p for p in out.split("\x00") if p}


def is_ancestor(repo: Path, env: dict[str, str], *, url: str, old: str, new: str, depth: int = 50) -> bool:
    """Whether commit `old` (fetched) is among the last `depth` commits of `new`'s history:
    an older commit of the same branch. False when it is not, or cannot be told (`new` gone
    with a rewritten branch, or further back than `depth`)."""
    checked_sha(new)
    if _run(["git", "fetch", "-q", "--no-tags", f"--depth={depth}", url, new], env=env, cwd=repo,
            check=False).returncode:
        return False
    return _run(["git", "merge-base", "--is-ancestor", old, new], env=env, cwd=repo, check=False).returncode == 0


def ls_remote(env: dict[str, str], cwd: Path, *, url: str, branch: str) -> str | None:
    """The branch's commit on the server, None when it has no such branch."""
    out = _run(["git", "ls-remote", "--heads", url, f"refs/heads/{branch}"], env=env, cwd=cwd).stdout
    for line in out.splitlines():
        sha, _, ref = line.partition("\t")
        if ref == f"refs/heads/{branch}":
            return sha
    return None
