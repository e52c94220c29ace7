"""A GitHub connection that authenticates as a GitHub App installation instead of a personal
token. GitHub's documented flow, through PyGithub: a JWT signed RS256 with the App's private
key (iat 60 s in the past, exp 5 min ahead, iss the App's id) is traded at
`POST /app/installations/{id}/access_tokens` for an installation access token that lasts about
an hour. That token is used like a personal token: `Authorization: token …` on the REST API,
HTTP Basic `x-access-token:<token>` for git over https.

The token is kept in this process's memory only (never stored, never logged) until shortly
before it expires; the key is read from its ciphertext when a token is needed. The cache is
keyed by the connection and a digest of its credentials' ciphertext, so a new key or
installation id takes effect on the next call in every process."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import github
import requests
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from django.conf import settings
from github import Auth, GithubException, GithubIntegration

from iacplatform.errors import PlatformError, invalid_field
from tasks_app.vcs.models import VcsConnection

# PyGithub logs every answer's body at DEBUG, and the access_tokens answer is the token
# itself. PyGithub sets its "github" logger to INFO on import; its requester is pinned at
# INFO too, so that turning PyGithub's debug logging on never writes a token.
logging.getLogger("github.Requester").setLevel(logging.INFO)

# A token is traded for a new one this long before GitHub says it expires (GitHub: one hour).
REFRESH_BEFORE_SECONDS = 300
APP_ID_LIMIT = 100


class GitHubAppError(PlatformError):
    """No installation token could be had (GitHub down, key revoked, App uninstalled): worth
    another try later, like any forge failure."""

    status = 502


def check_app_id(value: Any) -> str:
    """The App's id (digits) or its client id (GitHub recommends either as the JWT's iss)."""
    text = str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not text or len(text) > APP_ID_LIMIT or not text.replace(".", "").replace("_", "").isalnum():
        raise invalid_field("app_id", "the GitHub App's id (digits, from the App's settings page) or its client id")
    return text


def check_installation_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise invalid_field("app_installation_id", "the installation's id: a positive whole number "
                            "(the number at the end of the installation's settings URL)")
    return value


def check_private_key(pem: Any) -> str:
    """The App's private key as GitHub gives it (a PEM file): must parse as an unencrypted RSA
    private key, or the API says why. The key itself never appears in the message."""
    if not isinstance(pem, str) or not pem.strip() or len(pem) > 20000:
        raise invalid_field("app_private_key", "the GitHub App's private key, a PEM file's text")
    try:
        key = load_pem_private_key(pem.strip().encode(), password=None)
    except TypeError as exc:  # encrypted with a passphrase
        raise invalid_field("app_private_key", "is encrypted with a passphrase: give the key GitHub "
                            "generated, unencrypted") from exc
    except Exception as exc:  # noqa: BLE001 - cryptography's parse errors vary (ValueError, UnsupportedAlgorithm)
        raise invalid_field("app_private_key", "is not a PEM private key (GitHub's download begins with "
                            "-----BEGIN RSA PRIVATE KEY-----)") from exc
    if not isinstance(key, RSAPrivateKey):
        raise invalid_field("app_private_key", "is not an RSA key: GitHub Apps sign their JWTs with RS256")
    if key.key_size < 2048:
        raise invalid_field("app_private_key", f"is a {key.key_size}-bit RSA key: GitHub's are 2048 bits or more")
    return pem.strip() + "\n"


@dataclass(frozen=True)
class _Cached:
    token: str
    expires_at: float  # epoch seconds

    def __repr__(self) -> str:  # never the token, whoever prints the cache
        return f"_Cached(token=<hidden>, expires_at={self.expires_at})"


_cache: dict[tuple[int, str], _Cached] = {}
_lock = threading.Lock()


def _key(connection: VcsConnection, api: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    for part in (connection.github_app_id, str(connection.github_app_installation_id), api):
        digest.update(part.encode() + b"\x00")
    digest.update(bytes(connection.encrypted_github_app_private_key or b""))
    return connection.id, digest.hexdigest()


def installation_token(connection: VcsConnection, api: str) -> str:
    """The installation's access token: from memory while it has more than
    REFRESH_BEFORE_SECONDS left, otherwise a new one from GitHub (`api` its REST API base)."""
    key = _key(connection, api)
    with _lock:
        cached = _cache.get(key)
        if cached is not None and cached.expires_at - REFRESH_BEFORE_SECONDS > time.time():
            return cached.token
        # Under the lock: concurrent callers of one process trade the JWT once.
        app_id: int | str = int(connection.github_app_id) if connection.github_app_id.isdigit() \
            else connection.github_app_id
        integration = GithubIntegration(
            auth=Auth.AppAuth(app_id, connection.github_app_private_key), base_url=api,
            timeout=settings.IAC_VCS_TIMEOUT_SECONDS, retry=None)
        try:
            granted = integration.get_access_token(int(connection.github_app_installation_id or 0))
        except (GithubException, requests.RequestException, github.BadAttributeException) as exc:
            status = getattr(exc, "status", None)
            raise GitHubAppError(
                f"GitHub refused the App's installation token ({status}): check the App id, key and installation"
                if status else f"GitHub could not be reached for the App's installation token: {type(exc).__name__}"
            ) from exc
        finally:
            integration.close()
        expires = granted.expires_at
        expires_at = expires.timestamp() if isinstance(expires, datetime) else time.time() + 3600
        for stale in [k for k in _cache if k[0] == connection.id]:
            del _cache[stale]
        _cache[key] = _Cached(token=granted.token, expires_at=expires_at)
        return granted.token


def forget(connection_id: int) -> None:
    """Drop this process's tokens of a connection (its credentials changed)."""
    with _lock:
        for stale in [k for k in _cache if k[0] == connection_id]:
            del _cache[stale]
