"""Real git for the tests: repositories made with the git CLI, served over smart HTTP by
git's own `git http-backend` (as CGI, behind a small threaded HTTP server on the loopback)."""

from __future__ import annotations

import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Dana Dev", "GIT_AUTHOR_EMAIL": "dana@example.com",
    "GIT_COMMITTER_NAME": "Dana Dev", "GIT_COMMITTER_EMAIL": "dana@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path | str | None = None) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd or "/nonexistent")}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


class _Handler(BaseHTTPRequestHandler):
    server: GitHttpServer  # type: ignore[assignment]

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _cgi(self) -> None:
        url = urlsplit(self.path)
        if self.server.token is not None and self.headers.get("Authorization") != f"Bearer {self.server.token}":
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.end_headers()
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(self.server.root), "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command, "PATH_INFO": url.path, "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(self.server.root),
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.split(b"\r\n"):
            key, _, value = line.decode().partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.server.requests.append((self.command, url.path))

    do_GET = do_POST = _cgi


class GitHttpServer(ThreadingHTTPServer):
    """Serves every bare repository under `root` at http://127.0.0.1:<port>/<name>.git."""

    daemon_threads = True

    def __init__(self, root: Path, token: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.token = token
        self.requests: list[tuple[str, str]] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class Repo:
    """A bare repository under the server's root and a working clone to commit and push from."""

    def __init__(self, root: Path, name: str, work: Path) -> None:
        self.name = name
        self.bare = root / f"{name}.git"
        self.bare.parent.mkdir(parents=True, exist_ok=True)
        git("init", "--bare", "-b", "main", str(self.bare))
        self.work = work
        git("init", "-b", "main", str(work))
        git("remote", "add", "origin", str(self.bare), cwd=work)

    def commit(self, files: dict[str, str], message: str, *, branch: str = "main", push: bool = True) -> str:
        current = git("rev-parse", "--abbrev-ref", "HEAD", cwd=self.work) if (self.work / ".git" / "refs" / "heads").exists() and git("branch", "--list", cwd=self.work) else ""
        if current != branch:
            exists = branch in git("branch", "--list", cwd=self.work).replace("*", "").split()
            git("checkout", *(() if exists else ("-b",)), branch, cwd=self.work)
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", message, cwd=self.work)
        sha = git("rev-parse", "HEAD", cwd=self.work)
        if push:
            git("push", "-q", "origin", f"{branch}:{branch}", cwd=self.work)
        return sha
