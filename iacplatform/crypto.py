"""Encryption at rest for sensitive variables, plan files and state versions.

Fernet (AES-128-CBC + HMAC-SHA256) from `cryptography`. The key is IAC_ENCRYPTION_KEY (a
Fernet key) or, when unset, derived from SECRET_KEY with HKDF so a local install needs no
extra setting. Rotating SECRET_KEY without IAC_ENCRYPTION_KEY makes old data unreadable:
production sets IAC_ENCRYPTION_KEY.
"""

from __future__ import annotations

import base64
import functools

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@functools.cache
def _fernet() -> Fernet:
    key = settings.IAC_ENCRYPTION_KEY
    if key:
        try:
            return Fernet(key.encode())
        except ValueError as exc:
            raise ImproperlyConfigured(
                "IAC_ENCRYPTION_KEY must be 32 url-safe base64-encoded bytes (Fernet.generate_key())"
            ) from exc
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"iacplatform", info=b"at-rest").derive(
        settings.SECRET_KEY.encode()
    )
    return Fernet(base64.urlsafe_b64encode(raw))


def encrypt(data: bytes) -> bytes:
    return _fernet().encrypt(data)


def decrypt(token: bytes) -> bytes:
    try:
        return _fernet().decrypt(bytes(token))
    except InvalidToken as exc:
        raise ValueError("encrypted data cannot be decrypted with the configured key") from exc
