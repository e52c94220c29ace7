"""python -m agents_app.agent --server URL --pool-token TOKEN [--name N] [--work-root DIR] [--slots 3]"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

from agents_app.agent.process import AgentProcess
from agents_app.agent.terraform import resolve_terraform


def main() -> None:
    parser = argparse.ArgumentParser(prog="agent", description="IaC platform agent: runs terraform jobs")
    parser.add_argument("--server", default=os.environ.get("IAC_SERVER_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--pool-token", default=os.environ.get("IAC_POOL_TOKEN", ""))
    parser.add_argument("--name", default=os.environ.get("IAC_AGENT_NAME") or f"{socket.gethostname()}-{os.getpid()}")
    parser.add_argument("--work-root", type=Path, default=None)
    parser.add_argument("--slots", type=int, default=int(os.environ.get("IAC_AGENT_SLOTS", "3")))
    parser.add_argument("--terraform", default=os.environ.get("IAC_TERRAFORM_BIN", ""))
    parser.add_argument("--apply-pending-ttl", type=float,
                        default=float(os.environ.get("IAC_AGENT_APPLY_PENDING_TTL_SECONDS", 24 * 3600)))
    parser.add_argument("--finished-ttl", type=float,
                        default=float(os.environ.get("IAC_AGENT_FINISHED_TTL_SECONDS", 3600)))
    args = parser.parse_args()
    if not args.pool_token:
        parser.error("a pool token is required (--pool-token or IAC_POOL_TOKEN)")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s agent {args.name} %(levelname)s %(message)s")
    var_dir = Path(os.environ.get("IAC_VAR_DIR", Path.cwd() / "var"))
    work_root = args.work_root or var_dir / "agents" / args.name
    AgentProcess(
        server=args.server,
        pool_token=args.pool_token,
        name=args.name,
        work_root=work_root,
        slots=args.slots,
        terraform=resolve_terraform(var_dir, args.terraform),
        apply_pending_ttl=args.apply_pending_ttl,
        finished_ttl=args.finished_ttl,
    ).run()


if __name__ == "__main__":
    main()
