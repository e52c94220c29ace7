"""python -m agents_app.agent --server URL [--pool-token TOKEN] [--name N] [--work-root DIR] [--slots 3]

Prefer IAC_POOL_TOKEN to --pool-token: a command line is visible to every user of the
machine (ps, /proc/<pid>/cmdline), the environment is not."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

from agents_app.agent.health import start_health_server
from agents_app.agent.process import AgentProcess
from agents_app.agent.providers import ProviderCache
from agents_app.agent.sandbox import SandboxUnavailable, make_sandbox, terraform_data_paths
from agents_app.agent.terraform import resolve_terraform
from agents_app.agent.warmdirs import STORE_DIR, WarmPlans

log = logging.getLogger("agents_app.agent")

PROVIDER_CACHE_DIR = ".providers"
PROVIDER_CLI_CONFIG = ".providers.tfrc"


def default_work_roots() -> Path:
    """Where agents keep their work dirs unless told: IAC_AGENT_WORK_ROOT, else the user's
    state dir (`$XDG_STATE_HOME/iac-agents`, `~/.local/state/iac-agents`). Never under the
    server's data dir (var/: its secret key, the database socket), and not under /tmp (it
    may be cleaned, and the sandbox mounts a private /tmp)."""
    configured = os.environ.get("IAC_AGENT_WORK_ROOT")
    if configured:
        return Path(configured)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "iac-agents"


def configure_logging(name: str, fmt: str) -> None:
    """`text`: the agent's readable lines. `json` (IAC_LOG_FORMAT, as on the server): one
    object per line with the agent's name and, in a job's thread (named `job-<id>`), the job
    id. The agent knows its server-side id only after registering, so the name identifies it."""
    if fmt != "json":
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s agent {name} %(levelname)s %(message)s")
        return
    import structlog  # only for JSON; no Django (the agent-standalone import contract)

    def agent_ids(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        event["agent"] = name
        thread = threading.current_thread().name
        if thread.startswith("job-") and thread[4:].isdigit():
            event["job_id"] = int(thread[4:])
        return event

    handler = logging.StreamHandler()
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            agent_ids,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    ))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def warm_plans_from_environment(work_root: Path) -> WarmPlans:
    """The warm plan dirs and, with IAC_AGENT_PROVIDER_UPSTREAM, the provider cache: then the
    agent writes its own terraform CLI configuration (the cache, then the upstream mirrors)
    and points TF_CLI_CONFIG_FILE at it, before the sandbox reads that variable to bind the
    configuration and the mirrors it names read-only."""
    work_root.mkdir(parents=True, exist_ok=True)
    named = os.environ.get("TF_CLI_CONFIG_FILE")
    if named and not Path(named).is_file():
        # Terraform would print "Unable to open CLI configuration file" into every job's log.
        log.warning("TF_CLI_CONFIG_FILE names %s, which is not a file: jobs run without it", named)
        del os.environ["TF_CLI_CONFIG_FILE"]
    upstream = [Path(p).absolute() for p in os.environ.get("IAC_AGENT_PROVIDER_UPSTREAM", "").split(os.pathsep) if p]
    budget = int(os.environ.get("IAC_AGENT_WARM_PLAN_DIRS") or 20)
    # Without a cache, the mirrors of the operator's own CLI configuration are where init
    # links unpacked providers from: a warm plan dir may link there too (read-only to jobs).
    mirrors = [p.absolute() for p in terraform_data_paths(os.environ) if p.is_dir()]
    cache = None
    if upstream:
        cache_bytes = int(os.environ.get("IAC_AGENT_PROVIDER_CACHE_BYTES") or 2 * 1024**3)
        cache = ProviderCache(work_root.absolute() / PROVIDER_CACHE_DIR, upstream, cache_bytes)
        config = work_root / PROVIDER_CLI_CONFIG
        config.write_text(cache.cli_config())
        os.environ["TF_CLI_CONFIG_FILE"] = str(config.absolute())
    return WarmPlans(work_root / STORE_DIR, budget, cache, upstream=upstream if cache else mirrors)


def main() -> None:
    parser = argparse.ArgumentParser(prog="agent", description="IaC platform agent: runs terraform jobs")
    parser.add_argument("--server", default=os.environ.get("IAC_SERVER_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--pool-token", default=os.environ.get("IAC_POOL_TOKEN", ""),
                        help="prefer the IAC_POOL_TOKEN environment variable: a command line is visible in ps")
    parser.add_argument("--name", default=os.environ.get("IAC_AGENT_NAME") or f"{socket.gethostname()}-{os.getpid()}")
    parser.add_argument("--work-root", type=Path, default=None,
                        help="this agent's work root (default: $IAC_AGENT_WORK_ROOT/<name>)")
    parser.add_argument("--slots", type=int, default=int(os.environ.get("IAC_AGENT_SLOTS", "3")))
    parser.add_argument("--terraform", default=os.environ.get("IAC_TERRAFORM_BIN", ""))
    parser.add_argument("--sandbox", default=os.environ.get("IAC_AGENT_SANDBOX", "auto"),
                        help="auto (bubblewrap when it works), bwrap (required) or off")
    parser.add_argument("--apply-pending-ttl", type=float,
                        default=float(os.environ.get("IAC_AGENT_APPLY_PENDING_TTL_SECONDS", 24 * 3600)))
    parser.add_argument("--finished-ttl", type=float,
                        default=float(os.environ.get("IAC_AGENT_FINISHED_TTL_SECONDS", 3600)))
    args = parser.parse_args()
    if not args.pool_token:
        parser.error("a pool token is required (IAC_POOL_TOKEN or --pool-token)")
    configure_logging(args.name, os.environ.get("IAC_LOG_FORMAT", "text"))
    var_dir = Path(os.environ.get("IAC_VAR_DIR", Path.cwd() / "var"))
    work_root = args.work_root or default_work_roots() / args.name
    terraform = resolve_terraform(var_dir, args.terraform)
    warm_plans = warm_plans_from_environment(work_root)
    try:
        sandbox = make_sandbox(args.sandbox, terraform, work_root)
    except SandboxUnavailable as exc:
        raise SystemExit(f"agent {args.name}: {exc}") from exc
    agent = AgentProcess(
        server=args.server,
        pool_token=args.pool_token,
        name=args.name,
        work_root=work_root,
        slots=args.slots,
        terraform=terraform,
        sandbox=sandbox,
        apply_pending_ttl=args.apply_pending_ttl,
        finished_ttl=args.finished_ttl,
        warm_plans=warm_plans,
    )
    # A pod's probes: /healthz/live and /healthz/ready on a local port (0, the default: off).
    health_port = int(os.environ.get("IAC_AGENT_HEALTH_PORT") or 0)
    if health_port:
        start_health_server(agent, os.environ.get("IAC_AGENT_HEALTH_HOST") or "127.0.0.1", health_port)
    agent.run()


if __name__ == "__main__":
    main()
