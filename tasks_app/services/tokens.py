"""Users' API tokens: named, stored as a digest only (django-rest-knox), shown once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from iacplatform.errors import Invalid, NotFound
from tasks_app.models import ApiToken
from tasks_app.services.audit import audit_record


def token_create(*, user: Any, name: str, expires_at: datetime | None = None, actor: Any = None) -> tuple[ApiToken, str]:
    """A new token for `user`; returns it and its plain text, which is never stored."""
    name = name.strip()
    if not name:
        raise Invalid(fields={"name": ["a token needs a name (what uses it: 'ci', 'laptop', ...)"]})
    if expires_at is not None and expires_at <= timezone.now():
        raise Invalid(fields={"expires_at": ["must be in the future"]})
    token, plain = ApiToken.objects.create(user=user, expiry=None, name=name[:100])
    if expires_at is not None:
        token.expiry = expires_at
        token.save(update_fields=["expiry"])
    audit_record(actor=actor or user, action="token.create", obj=user, data={"name": token.name, "key": token.token_key})
    return token, plain


def token_revoke(*, user: Any, key: str, actor: Any) -> None:
    """Revoke `user`'s token whose public key prefix is `key` (the caller checked that the
    actor may: the user themself, or a site admin)."""
    token = ApiToken.objects.filter(user=user, token_key=key).first()
    if token is None:
        raise NotFound(f"no token '{key}'")
    audit_record(actor=actor, action="token.revoke", obj=user, data={"name": token.name, "key": key})
    token.delete()
