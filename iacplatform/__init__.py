"""The platform's project package. Importing it imports nothing else, so the command-line
client (`python -m iacplatform.cli`) needs neither Django nor Celery. Celery's
`-A iacplatform` finds its app in `iacplatform.celery`; `iacplatform.celery_app` still
works, loaded on first use."""

from typing import Any

__all__ = ["celery_app"]


def __getattr__(name: str) -> Any:
    if name == "celery_app":
        from .celery import app  # Celery and Django only when asked for (see above)

        return app
    raise AttributeError(f"module 'iacplatform' has no attribute {name!r}")
