"""Authentication of users' API tokens (django-rest-knox, with our named token model)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from knox.auth import TokenAuthentication
from rest_framework import exceptions

# A token's last use is written at most this often: not a write per request.
LAST_USED_RESOLUTION = timedelta(seconds=60)


class ApiTokenAuthentication(TokenAuthentication):
    def validate_user(self, auth_token: Any) -> tuple[Any, Any]:
        user, token = super().validate_user(auth_token)
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            type(token).objects.filter(digest=token.digest).update(last_used_at=now)
            token.last_used_at = now
        return user, token


def user_by_token(token: str) -> Any | None:
    """The active user an API token belongs to, or None (for callers outside DRF: the state
    backend, websockets)."""
    try:
        user, _ = ApiTokenAuthentication().authenticate_credentials(token.encode())
    except exceptions.AuthenticationFailed:
        return None
    return user


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """Describes the token header in the OpenAPI schema."""

    target_class = "iacplatform.auth.ApiTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`Token <key>`: a user's API token (created on the API tokens page or POST /api/v1/tokens/)"}
