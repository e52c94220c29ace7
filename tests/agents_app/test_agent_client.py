"""The agent's HTTP client rides out a server restart: 503s are retried after their
Retry-After, other 5xx and transport errors with backoff; what is left after the retries is
a ServerError. A real HTTP server (stdlib) answers."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents_app.agent.client import Client, ServerError


class Script:
    """Answers each request with the next (status, headers) of the script, then 200."""

    def __init__(self, *answers: tuple[int, dict[str, str]]) -> None:
        self.answers = list(answers)
        self.seen: list[tuple[str, float]] = []


class OkHandler(BaseHTTPRequestHandler):
    """Answers 200 {"ok": true}, quietly."""

    def answer_ok(self) -> None:
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            script.seen.append((self.command, time.monotonic()))
            status, headers = script.answers.pop(0) if script.answers else (200, {})
            body = json.dumps({"detail": "restarting"} if status >= 400 else {"ok": True}).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield script, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_it_retries_503_after_retry_after(server):
    script, url = server
    script.answers = [(503, {"Retry-After": "1"}), (503, {"Retry-After": "1"})]
    started = time.monotonic()
    assert Client(url).call("POST", "/agent/v1/heartbeat", json={}) == {"ok": True}
    assert len(script.seen) == 3
    # Each retry waited what the server asked, not the 0.2 s backoff.
    assert script.seen[1][1] - script.seen[0][1] >= 0.9
    assert script.seen[2][1] - script.seen[1][1] >= 0.9
    assert time.monotonic() - started < 10


def test_it_retries_other_server_errors_with_backoff(server):
    script, url = server
    script.answers = [(500, {}), (502, {})]
    assert Client(url).call("GET", "/agent/v1/jobs/1/configuration", fence=1) == {"ok": True}
    assert [m for m, _ in script.seen] == ["GET", "GET", "GET"]


def test_it_gives_up_after_its_retries(server):
    script, url = server
    script.answers = [(503, {"Retry-After": "0"})] * 3
    with pytest.raises(ServerError) as err:
        Client(url).call("POST", "/agent/v1/heartbeat", json={}, retries=1)
    assert err.value.status == 503
    assert err.value.detail == "restarting"
    assert len(script.seen) == 2


def test_it_does_not_retry_a_client_error(server):
    script, url = server
    script.answers = [(409, {})]
    with pytest.raises(ServerError) as err:
        Client(url).call("POST", "/agent/v1/jobs/1/finish", json={}, fence=1)
    assert err.value.status == 409
    assert len(script.seen) == 1


def test_it_retries_while_the_server_is_not_listening():
    # A port nobody listens on yet; a server appears there after a moment.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    class Handler(OkHandler):
        def do_GET(self) -> None:
            self.answer_ok()

    holder: dict = {}

    def start_later() -> None:
        time.sleep(0.5)
        holder["httpd"] = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        holder["httpd"].serve_forever()

    threading.Thread(target=start_later, daemon=True).start()
    try:
        assert Client(f"http://127.0.0.1:{port}").call("GET", "/agent/v1/jobs/1/plan-file", fence=1) == {"ok": True}
    finally:
        if "httpd" in holder:
            holder["httpd"].shutdown()
            holder["httpd"].server_close()


def test_calls_from_new_threads_reuse_an_idle_connection():
    """A job's thread and its log stream's are new for every job: their calls (the job's
    result among them) go over a connection already open, not a new one each."""
    ports: list[int] = []

    class Handler(OkHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as Daphne

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            ports.append(self.client_address[1])
            self.answer_ok()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    client = Client(f"http://127.0.0.1:{httpd.server_address[1]}")
    try:
        for n in range(3):  # one after the other, each from a thread of its own
            thread = threading.Thread(target=client.call, args=("POST", f"/agent/v1/jobs/{n}/finish"),
                                      kwargs={"json": {}, "fence": 1})
            thread.start()
            thread.join(10)
        assert len(ports) == 3
        assert len(set(ports)) == 1, "each thread opened a connection of its own"
        # Calls at the same time each get a session (and connection) of their own.
        barrier = threading.Barrier(2)
        results: list = []

        def at_once() -> None:
            barrier.wait(5)
            results.append(client.call("POST", "/agent/v1/heartbeat", json={}))

        threads = [threading.Thread(target=at_once) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert results == [{"ok": True}, {"ok": True}]
    finally:
        httpd.shutdown()
        httpd.server_close()
