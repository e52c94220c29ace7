"""The forges' status and comment APIs, the one edge the tests cannot reach: a local server
that checks each request against the shape GitHub's REST API documents (create a commit
status, create and update an issue comment), records what was sent, and answers as GitHub
does. `fail(n)` makes the next n requests answer 500 (the forge down)."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

STATUS_STATES = {"error", "failure", "pending", "success"}
STATUS = re.compile(r"^/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/statuses/(?P<sha>[0-9a-f]{40})$")
COMMENTS = re.compile(r"^/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/issues/(?P<number>\d+)/comments$")
COMMENT = re.compile(r"^/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/issues/comments/(?P<id>\d+)$")


@dataclass
class Sent:
    method: str
    path: str
    body: dict[str, Any]
    answered: int


@dataclass
class ForgeState:
    token: str
    sent: list[Sent] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)
    failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server: FakeGitHub  # type: ignore[assignment]

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        st = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        code, answer = self._route(st, body)
        with st.lock:
            st.sent.append(Sent(self.command, self.path, body if isinstance(body, dict) else {}, code))
        self._answer(code, answer)

    def _violation(self, st: ForgeState, why: str) -> tuple[int, Any]:
        with st.lock:
            st.violations.append(f"{self.command} {self.path}: {why}")
        return 422, {"message": "Validation Failed", "errors": [why]}

    def _route(self, st: ForgeState, body: Any) -> tuple[int, Any]:
        if self.headers.get("Authorization") not in (f"token {st.token}", f"Bearer {st.token}"):
            return 401, {"message": "Bad credentials"}
        with st.lock:
            if st.failures:
                st.failures -= 1
                return 500, {"message": "Server Error"}
        if not isinstance(body, dict):
            return self._violation(st, "the body is not a JSON object")
        if self.command == "POST" and (m := STATUS.match(self.path)):
            if body.get("state") not in STATUS_STATES:
                return self._violation(st, f"state must be one of {sorted(STATUS_STATES)}")
            extra = set(body) - {"state", "target_url", "description", "context"}
            if extra:
                return self._violation(st, f"unknown fields {sorted(extra)}")
            for key in ("target_url", "description", "context"):
                if key in body and not isinstance(body[key], str):
                    return self._violation(st, f"{key} must be a string")
            if len(body.get("description", "")) > 140:
                return self._violation(st, "description is longer than 140 characters")
            return 201, {"id": next(self.server.ids), "url": f"{self.server.url}{self.path}", "state": body["state"],
                         "description": body.get("description"), "target_url": body.get("target_url"),
                         "context": body.get("context", "default"), "created_at": "2026-01-01T00:00:00Z",
                         "updated_at": "2026-01-01T00:00:00Z"}
        if self.command == "POST" and (m := COMMENTS.match(self.path)):
            if set(body) != {"body"} or not isinstance(body["body"], str):
                return self._violation(st, "a comment is {\"body\": string}")
            cid = next(self.server.ids)
            comment = self._comment(cid, m["owner"], m["repo"], int(m["number"]), body["body"])
            with st.lock:
                st.comments[cid] = comment
            return 201, comment
        if self.command == "PATCH" and (m := COMMENT.match(self.path)):
            if set(body) != {"body"} or not isinstance(body["body"], str):
                return self._violation(st, "a comment update is {\"body\": string}")
            with st.lock:
                comment = st.comments.get(int(m["id"]))
                if comment is None:
                    return 404, {"message": "Not Found"}
                comment["body"] = body["body"]
            return 200, comment
        return self._violation(st, "not an endpoint the platform should call")

    def _comment(self, cid: int, owner: str, repo: str, number: int, text: str) -> dict[str, Any]:
        base = f"{self.server.url}/repos/{owner}/{repo}"
        return {"id": cid, "node_id": f"IC_{cid}", "url": f"{base}/issues/comments/{cid}",
                "html_url": f"https://github.com/{owner}/{repo}/pull/{number}#issuecomment-{cid}",
                "issue_url": f"{base}/issues/{number}", "body": text, "user": {"login": "iac-bot", "id": 1},
                "author_association": "NONE", "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-01T00:00:00Z"}

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle


class FakeGitHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, token: str = "ghp_test_token") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = ForgeState(token=token)
        self.ids = itertools.count(1000)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def fail(self, n: int) -> None:
        with self.state.lock:
            self.state.failures = n

    def statuses(self, context: str | None = None) -> list[Sent]:
        with self.state.lock:
            return [s for s in self.state.sent if STATUS.match(s.path) and s.answered == 201
                    and (context is None or s.body.get("context") == context)]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


# --- the webhook side: payloads in GitHub's documented format, signed as GitHub signs ----


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send(base_url: str, connection: str, secret: str | None, event: str, payload: dict, *,
         delivery: str | None = None, signature: str | None = None) -> requests.Response:
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/abc123",
               "X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
               "X-GitHub-Hook-ID": "123456", "X-GitHub-Hook-Installation-Target-Type": "repository"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    elif secret is not None:
        headers["X-Hub-Signature-256"] = sign(secret, body)
    return requests.post(f"{base_url}/webhooks/{connection}/", data=body, headers=headers, timeout=30)


def _repository(full_name: str) -> dict[str, Any]:
    owner, name = full_name.split("/")
    return {"id": 1296269, "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5", "name": name, "full_name": full_name,
            "private": False, "owner": {"login": owner, "id": 1, "type": "User"},
            "html_url": f"https://github.com/{full_name}", "clone_url": f"https://github.com/{full_name}.git",
            "default_branch": "main", "fork": False}


def push_payload(full_name: str, *, before: str, after: str, message: str, files: dict[str, list[str]],
                 branch: str = "main") -> dict[str, Any]:
    """A push event as GitHub sends it (docs.github.com, webhook events: push)."""
    commit = {"id": after, "tree_id": "0" * 40, "distinct": True, "message": message,
              "timestamp": "2026-01-01T00:00:00Z", "url": f"https://github.com/{full_name}/commit/{after}",
              "author": {"name": "Dana Dev", "email": "dana@example.com", "username": "dana"},
              "committer": {"name": "Dana Dev", "email": "dana@example.com", "username": "dana"},
              "added": files.get("added", []), "removed": files.get("removed", []),
              "modified": files.get("modified", [])}
    return {"ref": f"refs/heads/{branch}", "before": before, "after": after, "created": False, "deleted": False,
            "forced": False, "base_ref": None, "compare": f"https://github.com/{full_name}/compare/{before[:12]}...{after[:12]}",
            "commits": [commit], "head_commit": commit, "repository": _repository(full_name),
            "pusher": {"name": "dana", "email": "dana@example.com"}, "sender": {"login": "dana", "id": 2}}


def pull_request_payload(full_name: str, *, action: str, number: int, head_sha: str, base_sha: str,
                         head_ref: str, title: str, fork_of: str | None = None,
                         author: str = "dana") -> dict[str, Any]:
    """A pull_request event (docs.github.com, webhook events: pull_request)."""
    head_repo = _repository(fork_of or full_name)
    head_repo["fork"] = fork_of is not None
    return {"action": action, "number": number, "pull_request": {
        "url": f"https://api.github.com/repos/{full_name}/pulls/{number}", "id": 1, "number": number,
        "state": "open", "title": title, "user": {"login": author, "id": 2},
        "html_url": f"https://github.com/{full_name}/pull/{number}", "author_association": "CONTRIBUTOR",
        "head": {"label": f"{author}:{head_ref}", "ref": head_ref, "sha": head_sha, "repo": head_repo},
        "base": {"label": "org:main", "ref": "main", "sha": base_sha, "repo": _repository(full_name)}},
        "repository": _repository(full_name), "sender": {"login": author, "id": 2}}
