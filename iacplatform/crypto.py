"""Encryption at rest for sensitive variables, plan files and state versions.

Fernet (AES-128-CBC + HMAC-SHA256) from `cryptography`, through MultiFernet so keys can be
rotated: the first key encrypts, every key decrypts. The keys, in that order:
- IAC_ENCRYPTION_KEYS, a comma-separated list of Fernet keys (put a new key first, run
  `manage.py reencrypt`, then drop the old one);
- IAC_ENCRYPTION_KEY, the single key of earlier versions (still honoured);
- a key derived from SECRET_KEY with HKDF, always last: it encrypts only when no key is set
  (a local install needs no extra setting), and stays a decryption key so data written
  before a key was configured remains readable. Rotating SECRET_KEY without a configured
  key makes such data unreadable: production sets IAC_ENCRYPTION_KEYS (or _KEY).
"""

from __future__ import annotations

import base64
import functools

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def _configured_keys() -> tuple[str, ...]:
    keys = [k.strip() for k in getattr(settings, "IAC_ENCRYPTION_KEYS", []) if k.strip()]
    single = settings.IAC_ENCRYPTION_KEY.strip()
    if single and single not in keys:
        keys.append(single)
    return tuple(keys)


@functools.cache
def _fernets(keys: tuple[str, ...], secret_key: str) -> tuple[MultiFernet, Fernet]:
    """(all keys, the encrypting one); cached per configuration, so tests that change the
    settings get the keys they set, and a process pays for HKDF once."""
    fernets: list[Fernet] = []
    for number, key in enumerate(keys, 1):
        try:
            fernets.append(Fernet(key.encode()))
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"IAC_ENCRYPTION_KEYS / IAC_ENCRYPTION_KEY: key {number} must be 32 url-safe base64-encoded "
                "bytes (Fernet.generate_key())"
            ) from exc
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"iacplatform", info=b"at-rest").derive(secret_key.encode())
    fernets.append(Fernet(base64.urlsafe_b64encode(raw)))
    return MultiFernet(fernets), fernets[0]


@functools.cache
def _transit(secret_key: str) -> Fernet:
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"iacplatform", info=b"in-transit").derive(
        secret_key.encode())
    return Fernet(base64.urlsafe_b64encode(raw))


def seal(data: bytes) -> bytes:
    """`data` encrypted for a short trip through Redis (a pushed job's payload): with a key
    derived from SECRET_KEY, which every web process has and Redis never sees. Not the
    at-rest keys: what is sealed here lives for seconds, and needs no rotation."""
    return _transit(settings.SECRET_KEY).encrypt(data)


def unseal(token: bytes, *, ttl: int) -> bytes:
    """What `seal` sealed at most `ttl` seconds ago; ValueError for anything else (forged,
    another platform's, too old)."""
    try:
        return _transit(settings.SECRET_KEY).decrypt(bytes(token), ttl=ttl)
    except InvalidToken as exc:
        raise ValueError("not sealed by this platform, or sealed too long ago") from exc


def _keys() -> tuple[MultiFernet, Fernet]:
    return _fernets(_configured_keys(), settings.SECRET_KEY)


def encrypt(data: bytes) -> bytes:
    return _keys()[0].encrypt(data)


def decrypt(token: bytes) -> bytes:
    try:
        return _keys()[0].decrypt(bytes(token))
    except InvalidToken as exc:
        raise ValueError("encrypted data cannot be decrypted with any configured key") from exc


def is_current(token: bytes) -> bool:
    """Whether the data is already encrypted with the first (encrypting) key."""
    try:
        _keys()[1].decrypt(bytes(token))
    except InvalidToken:
        return False
    return True


def rotate(token: bytes) -> bytes:
    """Re-encrypt with the first key (decrypting with any). Raises ValueError when no key
    decrypts it."""
    try:
        return _keys()[0].rotate(bytes(token))
    except InvalidToken as exc:
        raise ValueError("encrypted data cannot be decrypted with any configured key") from exc
