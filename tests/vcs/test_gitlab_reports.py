"""GitLab's side of reporting, through python-gitlab against a local server that checks each
call against GitLab's REST API (commit statuses, merge request notes) and records it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from iacplatform import crypto
from tasks_app.vcs import forges
from tasks_app.vcs.models import VcsConnection

SHA = "c" * 40
STATES = {"pending", "running", "success", "failed", "canceled"}


class FakeGitLab(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, token: str, fail: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.token, self.fail = token, fail
        self.sent: list[tuple[str, str, dict]] = []
        self.violations: list[str] = []
        self.notes: dict[int, str] = {}
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeGitLab  # type: ignore[assignment]

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        body = json.loads(raw) if raw else {k: v[0] for k, v in parse_qs(url.query).items()}
        path = unquote(url.path)
        self.server.sent.append((self.command, path, body))
        if self.headers.get("PRIVATE-TOKEN") != self.server.token:
            return self._answer(401, {"message": "401 Unauthorized"})
        if self.server.fail:
            self.server.fail -= 1
            return self._answer(500, {"message": "500 Internal Server Error"})
        # POST /api/v4/projects/<url-encoded path>/statuses/<sha>
        if self.command == "POST" and path.startswith("/api/v4/projects/") and "/statuses/" in path:
            if body.get("state") not in STATES or not body.get("name"):
                self.server.violations.append(f"status {body}")
                return self._answer(400, {"message": "state is missing"})
            return self._answer(201, {"id": 1, "sha": SHA, "status": body["state"], "name": body["name"]})
        if self.command == "POST" and path.endswith("/notes"):
            if set(body) != {"body"}:
                self.server.violations.append(f"note {body}")
                return self._answer(400, {"message": "body is missing"})
            nid = 100 + len(self.server.notes)
            self.server.notes[nid] = body["body"]
            return self._answer(201, {"id": nid, "body": body["body"], "noteable_type": "MergeRequest"})
        if self.command == "PUT" and "/notes/" in path:
            nid = int(path.rsplit("/", 1)[1])
            if nid not in self.server.notes or set(body) != {"body"}:
                return self._answer(404, {"message": "404 Not found"})
            self.server.notes[nid] = body["body"]
            return self._answer(200, {"id": nid, "body": body["body"]})
        self.server.violations.append(f"{self.command} {path}")
        return self._answer(404, {"message": "404 Not found"})

    do_GET = do_POST = do_PUT = _handle


@pytest.fixture
def gitlab():
    server = FakeGitLab("glpat-secret")
    yield server
    server.shutdown()
    server.server_close()


def _connection(url: str) -> VcsConnection:
    return VcsConnection(name="gl", kind="gitlab", url=url, encrypted_token=crypto.encrypt(b"glpat-secret"))


def test_it_sets_a_commit_status_and_keeps_one_merge_request_note(gitlab):
    conn = _connection(gitlab.url)
    forges.status_set(conn, repository="grp/infra", sha=SHA, state="failure", description="Error: boom",
                      context="iac/prod", target_url="https://iac.example.com/runs/1/")
    method, path, body = gitlab.sent[-1]
    assert (method, path) == ("POST", f"/api/v4/projects/grp/infra/statuses/{SHA}")
    assert body["state"] == "failed" and body["name"] == "iac/prod" and body["description"] == "Error: boom"
    note = forges.comment_upsert(conn, repository="grp/infra", number=5, comment_id=None, body="first")
    again = forges.comment_upsert(conn, repository="grp/infra", number=5, comment_id=note, body="second")
    assert again == note and gitlab.notes == {note: "second"}
    assert gitlab.violations == []


def test_it_raises_a_forge_error_without_the_body_when_gitlab_fails(gitlab):
    gitlab.fail = 1
    with pytest.raises(forges.ForgeError, match="answered 500"):
        forges.status_set(_connection(gitlab.url), repository="grp/infra", sha=SHA, state="pending",
                          description="planning", context="iac/prod", target_url="https://iac.example.com/runs/1/")
