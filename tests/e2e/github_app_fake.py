"""GitHub as a GitHub App sees it, for the tests: tests/vcs/forge.py's FakeGitHub (statuses
and comments, checked against GitHub's REST shapes) that also answers
`POST /app/installations/{id}/access_tokens` as GitHub documents: the request must carry a
JWT (`Authorization: Bearer`) signed RS256 with the App's private key, `iss` the App's id,
`iat` not in the future (60 s of drift allowed) and `exp` at most 10 minutes ahead and not
past. It answers 201 with an installation access token (`ghs_…`) and its `expires_at`; the
other endpoints then accept that token (and only tokens it issued, until they expire), never
the JWT itself. And a git server (tests/vcs/gitserver.py's) that serves only requests
carrying HTTP Basic `x-access-token:<an issued token>`, as github.com does for an App."""

from __future__ import annotations

import base64
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.vcs import forge, gitserver

ACCESS_TOKENS = re.compile(r"^/app/installations/(?P<id>\d+)/access_tokens$")


def new_private_key(bits: int = 2048) -> str:
    """An App private key as GitHub's download gives it (PKCS#1 PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


@dataclass
class Grant:
    token: str
    expires_at: float
    claims: dict[str, Any]


@dataclass
class AppState:
    app_id: str
    installation_id: int
    public_key: Any
    ttl: float
    grants: list[Grant] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    # (method, path) of each API request that carried an installation token.
    used: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(forge._Handler):
    server: FakeGitHubApp  # type: ignore[assignment]

    def _route(self, st: forge.ForgeState, body: Any) -> tuple[int, Any]:
        app = self.server.app
        auth = self.headers.get("Authorization") or ""
        if self.command == "POST" and (m := ACCESS_TOKENS.match(self.path)):
            return self._grant(app, auth, int(m["id"]))
        scheme, _, presented = auth.partition(" ")
        if scheme.lower() in ("token", "bearer") and self.server.valid(presented):
            with app.lock:
                app.used.append((self.command, self.path))
            # FakeGitHub's own checks take it from here, as if its one token had been sent.
            del self.headers["Authorization"]
            self.headers["Authorization"] = f"token {st.token}"
        return super()._route(st, body)

    def _grant(self, app: AppState, auth: str, installation: int) -> tuple[int, Any]:
        scheme, _, token = auth.partition(" ")
        if scheme != "Bearer" or not token:
            return self._refuse(app, "no JWT: Authorization must be 'Bearer <jwt>'")
        try:
            claims = jwt.decode(token, app.public_key, algorithms=["RS256"],
                                options={"require": ["iat", "exp", "iss"], "verify_iat": False})
        except jwt.PyJWTError as exc:
            return self._refuse(app, f"A JSON web token could not be decoded: {type(exc).__name__}")
        now = time.time()
        if str(claims["iss"]) != app.app_id:
            return self._refuse(app, f"'iss' is {claims['iss']!r}, not the App's id")
        if claims["iat"] > now + 60:
            return self._refuse(app, "'Issued at' claim ('iat') must be an Integer representing a time in the past")
        if claims["exp"] > now + 600 + 5:
            return self._refuse(app, "'Expiration time' claim ('exp') is too far in the future")
        if installation != app.installation_id:
            return 404, {"message": "Not Found"}
        grant = Grant(token="ghs_" + secrets.token_urlsafe(27), expires_at=now + app.ttl, claims=claims)
        with app.lock:
            app.grants.append(grant)
        expires = datetime.fromtimestamp(grant.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return 201, {"token": grant.token, "expires_at": expires,
                     "permissions": {"contents": "read", "metadata": "read", "pull_requests": "write",
                                     "statuses": "write"},
                     "repository_selection": "selected"}

    def _refuse(self, app: AppState, why: str) -> tuple[int, Any]:
        with app.lock:
            app.refused.append(why)
        return 401, {"message": why, "documentation_url": "https://docs.github.com/rest"}

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = forge._Handler._handle


class FakeGitHubApp(forge.FakeGitHub):
    """`ttl`: how long the tokens it issues last (GitHub: one hour)."""

    def __init__(self, *, app_id: str, installation_id: int, private_key: str, ttl: float = 3600) -> None:
        super().__init__(token="never-given-out-" + secrets.token_hex(8))
        self.RequestHandlerClass = _Handler
        public = serialization.load_pem_private_key(private_key.encode(), password=None).public_key()
        self.app = AppState(app_id=app_id, installation_id=installation_id, public_key=public, ttl=ttl)

    def valid(self, token: str) -> bool:
        now = time.time()
        with self.app.lock:
            return any(g.token == token and g.expires_at > now for g in self.app.grants)

    def tokens(self) -> list[str]:
        with self.app.lock:
            return [g.token for g in self.app.grants]


class _GitHandler(gitserver._Handler):
    server: AppGitServer  # type: ignore[assignment]

    def _cgi(self) -> None:
        user, password = "", ""
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode(errors="replace").partition(":")
        if user != "x-access-token" or not self.server.github.valid(password):
            self.server.refused.append(self.path)
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="GitHub"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.server.with_app_token.append(self.path)
        super()._cgi()

    do_GET = do_POST = _cgi


class AppGitServer(gitserver.GitHttpServer):
    """Serves the repositories under `root` only to an installation token of `github`."""

    def __init__(self, root: Any, github: FakeGitHubApp) -> None:
        super().__init__(root)
        self.RequestHandlerClass = _GitHandler
        self.github = github
        self.refused: list[str] = []
        self.with_app_token: list[str] = []
