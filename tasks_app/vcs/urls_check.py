"""Where a connection may point: https or ssh, never at the platform's own host's loopback or
link-local addresses (cloud metadata lives there), unless IAC_VCS_ALLOW_LOCAL_HOSTS allows a
self-hosted forge on them (plain http then too). Checked when a connection is saved and again
before every fetch and every call to a forge: a name may resolve elsewhere later."""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from iacplatform.errors import invalid_field

# scp-like ssh: git@github.com:owner/name.git
SCP_LIKE = re.compile(r"^(?P<user>[A-Za-z0-9._-]+)@(?P<host>[A-Za-z0-9.-]+):(?P<path>[^\s]*)$")


def url_host(url: str, *, field: str, schemes: tuple[str, ...]) -> tuple[str, str]:
    """(scheme, host) of a well-formed URL of one of `schemes`, or Invalid naming `field`."""
    if not isinstance(url, str) or not url or len(url) > 500 or any(c.isspace() or ord(c) < 32 for c in url):
        raise invalid_field(field, "a URL of at most 500 characters, without spaces")
    m = SCP_LIKE.match(url)
    if m and "ssh" in schemes:
        return "ssh", m["host"]
    parts = urlsplit(url)
    allowed = schemes + (("http",) if settings.IAC_VCS_ALLOW_LOCAL_HOSTS else ())
    if parts.scheme not in allowed:
        raise invalid_field(field, f"must be {' or '.join(schemes)}"
                            + (" (http only with IAC_VCS_ALLOW_LOCAL_HOSTS)" if "https" in schemes else ""))
    if not parts.hostname or parts.password:
        raise invalid_field(field, "must name a host (and no password: give the credential as token)")
    return parts.scheme, parts.hostname


def check_host(host: str, *, field: str) -> None:
    """Refuse a host that is, or resolves to, a loopback, link-local, unspecified or
    multicast address (unless IAC_VCS_ALLOW_LOCAL_HOSTS)."""
    if settings.IAC_VCS_ALLOW_LOCAL_HOSTS:
        return
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise invalid_field(field, f"host {host!r} does not resolve") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if address.is_loopback or address.is_link_local or address.is_unspecified or address.is_multicast:
            raise invalid_field(field, f"host {host!r} is a loopback or link-local address ({address}): "
                                       "not allowed (IAC_VCS_ALLOW_LOCAL_HOSTS allows a self-hosted forge there)")


def check_url(url: str, *, field: str, schemes: tuple[str, ...]) -> str:
    _scheme, host = url_host(url, field=field, schemes=schemes)
    check_host(host, field=field)
    return url


def api_url(connection: Any) -> str:
    """Where a connection's forge API answers (GitHub's default: https://api.github.com;
    GitLab: the instance), checked like every URL before use."""
    default = "https://api.github.com" if connection.kind == "github" else connection.url
    return check_url((connection.api_url or default).rstrip("/"), field="api_url", schemes=("https",))
