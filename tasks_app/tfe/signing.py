"""Signed, expiring URLs for what terraform fetches or sends without our token in a form we
can check: the configuration upload (go-tfe PUTs the archive to `upload-url`), the phases'
logs (go-tfe's LogReader replaces the query string with `limit` and `offset`, so the
signature rides in the path) and state downloads.

Each URL names what it grants (`purpose` and the object's id) and expires; the signature is
Django's TimestampSigner over SECRET_KEY with a salt of its own, so a token made for one
purpose or object never opens another."""

from __future__ import annotations

from django.conf import settings
from django.core import signing

from iacplatform.errors import NotFound

SALT = "tasks_app.tfe.url"
# Long enough for a slow upload or a long plan's log; the CLI asks for a fresh URL with each
# read of the plan or apply, so a log followed for hours still works.
MAX_AGE_SECONDS = 3600
UPLOAD_MAX_AGE_SECONDS = 600


def sign(purpose: str, object_id: int) -> str:
    return signing.TimestampSigner(salt=SALT).sign(f"{purpose}.{object_id}")


def unsign(token: str, purpose: str, *, max_age: int = MAX_AGE_SECONDS) -> int:
    """The object id the token grants `purpose` on; NotFound when it is forged, for another
    purpose, or expired (a URL that no longer works is gone, whatever the reason)."""
    try:
        value = signing.TimestampSigner(salt=SALT).unsign(token, max_age=max_age)
    except signing.BadSignature:
        raise NotFound("this URL is invalid or has expired") from None
    got, _, object_id = value.partition(".")
    if got != purpose or not object_id.isdigit():
        raise NotFound("this URL is invalid or has expired")
    return int(object_id)


def absolute(path: str) -> str:
    """terraform follows these URLs as they are (go-tfe parses them; no base is applied)."""
    return f"{settings.IAC_PUBLIC_URL.rstrip('/')}{path}"
