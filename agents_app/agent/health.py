"""The agent's health endpoints, for a pod's probes: `/healthz/live` and `/healthz/ready` on a
local port (IAC_AGENT_HEALTH_PORT; off by default), JSON like the server's.

- live: the process answers (its HTTP thread runs).
- ready: registered with the server, the last heartbeat answered recently, and the server
  reachable on the last attempt. 503 otherwise.

A stdlib http.server in a daemon thread: the agent imports no Django and needs no other
server, and a probe every few seconds is nothing to serve.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

log = logging.getLogger("iac.agent")


class AgentState(Protocol):
    """What the health server reads from the agent process (agents_app/agent/process.py)."""

    agent_id: int
    heartbeat_interval: float
    last_answered: float  # time.monotonic() of the last registration or heartbeat answered; 0: never
    last_server_error: str  # why the last call to the server failed; "" when it answered


def heartbeat_late_after(agent: AgentState) -> float:
    """Three missed heartbeats (never less than 30 s): one slow answer is not an outage."""
    return max(30.0, 3 * agent.heartbeat_interval)


def readiness(agent: AgentState, now: float | None = None) -> tuple[int, dict[str, Any]]:
    now = time.monotonic() if now is None else now
    checks: dict[str, dict[str, Any]] = {}
    checks["registered"] = ({"status": "ok", "agent_id": agent.agent_id} if agent.agent_id
                            else {"status": "down", "error": "not registered with the server yet"})
    if agent.last_answered:
        age = now - agent.last_answered
        checks["heartbeat"] = {"status": "ok" if age <= heartbeat_late_after(agent) else "down",
                               "age_seconds": round(age, 1)}
    else:
        checks["heartbeat"] = {"status": "down", "error": "the server has not answered yet"}
    checks["server"] = ({"status": "down", "error": agent.last_server_error} if agent.last_server_error
                        else {"status": "ok"})
    for check in checks.values():
        check["ms"] = 0.0  # read from the process's own state: nothing is called
    down = any(c["status"] != "ok" for c in checks.values())
    return (503 if down else 200), {"status": "down" if down else "ok", "checks": checks}


def liveness() -> tuple[int, dict[str, Any]]:
    return 200, {"status": "ok", "checks": {"process": {"status": "ok", "ms": 0.0}}}


def _handler(agent: AgentState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/healthz/live":
                status, body = liveness()
            elif path == "/healthz/ready":
                status, body = readiness(agent)
            else:
                status, body = 404, {"error": "not found: /healthz/live, /healthz/ready"}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
            pass  # a probe every few seconds would drown the agent's log

    return Handler


def start_health_server(agent: AgentState, host: str, port: int) -> ThreadingHTTPServer:
    """Serve the endpoints on host:port (port 0: any free port, see server.server_address)
    in a daemon thread; server.shutdown() stops it."""
    server = ThreadingHTTPServer((host, port), _handler(agent))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    log.info("health endpoints on http://%s:%d/healthz/{live,ready}", *server.server_address[:2])
    return server
