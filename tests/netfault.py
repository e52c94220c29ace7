"""A network between an agent and the server that loses what a test tells it to: a small
forwarding HTTP proxy (the agent is given its URL as --server). Every request is forwarded
as it is, except those a rule drops (answered 502, as a load balancer answers when the
upstream connection breaks) and those a rule answers itself (a corrupted answer)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

# (method, path, body) -> drop it?
Rule = Callable[[str, str, bytes], bool]
# (method, path, body) -> the body of a 200 answer to give instead of the server's, or None
Forge = Callable[[str, str, bytes], bytes | None]

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class LossyProxy:
    def __init__(self, upstream: str, drop: Rule | None = None, forge: Forge | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.drop = drop or (lambda method, path, body: False)
        self.forge = forge or (lambda method, path, body: None)
        self.dropped: list[str] = []
        self.forged: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.drop(self.command, self.path, body):
                    proxy.dropped.append(f"{self.command} {self.path}")
                    self._answer(502, {}, b'{"detail": "dropped by the test network"}')
                    return
                forged = proxy.forge(self.command, self.path, body)
                if forged is not None:
                    proxy.forged.append(f"{self.command} {self.path}")
                    self._answer(200, {"Content-Type": "application/json"}, forged)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"host"}}
                try:
                    resp = requests.request(self.command, proxy.upstream + self.path, data=body, headers=headers,
                                            timeout=120, allow_redirects=False)
                except requests.RequestException:
                    self._answer(502, {}, b'{"detail": "upstream unreachable"}')
                    return
                self._answer(resp.status_code, resp.headers, resp.content)

            def _answer(self, status: int, headers, content: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LossyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
