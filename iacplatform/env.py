"""Settings from the environment: one prefix (IAC_), strict parsing, clear refusals.

environs raises ``EnvValidationError`` naming the variable and what is wrong with it; we
turn that into ``ImproperlyConfigured`` so every entry point (web, worker, manage.py) stops
with the same one-line message instead of a traceback deep in settings.
"""

from __future__ import annotations

from environs import Env, EnvError

env = Env()

__all__ = ["env", "EnvError"]
