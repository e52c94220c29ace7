"""The project's own error vocabulary. Services raise these, never HTTP or DRF types; each
edge (REST API, pages, agent API, state backend) maps them to a status code in one place.
Anything else that escapes a service is a bug: a logged 500, never a 400."""

from __future__ import annotations


class PlatformError(Exception):
    """Base class: `str(exc)` is the message shown to the user or agent."""

    status = 500

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Invalid(PlatformError):
    """The request itself is wrong (a missing field, a bad value): 400. `fields` names the
    fields at fault, {field: [messages]}, when there are any."""

    status = 400

    def __init__(self, message: str = "", *, fields: dict[str, list[str]] | None = None) -> None:
        if not message and fields:
            message = "; ".join(f"{k}: {' '.join(v)}" for k, v in fields.items())
        super().__init__(message)
        self.fields = fields or {}


def invalid_field(field: str, message: str) -> Invalid:
    return Invalid(fields={field: [message]})


class Forbidden(PlatformError):
    status = 403


class NotFound(PlatformError):
    status = 404


class Conflict(PlatformError):
    """The request is well-formed but the current state does not allow it: 409."""

    status = 409


class Gone(PlatformError):
    """The caller's identity was retired (an agent declared offline): 410, register again."""

    status = 410
