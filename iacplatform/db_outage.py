"""PostgreSQL unreachable or restarting: answer 503 with Retry-After, not a 500 with a
traceback. The connection pool (settings: CONN_HEALTH_CHECKS) hands out only connections
that answer, so this is what a request sees while the server is down, or when the server
went away in the middle of it; the next request gets a fresh connection.

A middleware's `process_exception`: Django calls it for exceptions of views (the REST API
re-raises what its handler does not map, the agent API maps only the project's errors), so
it is the one place for pages, the REST API, the agent API and the state backend."""

from __future__ import annotations

import logging

import psycopg
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 3
MESSAGE = "The database is unavailable (restarting or unreachable); retry in a few seconds."
# SQLSTATEs of a server going away or not accepting connections yet: class 08 (connection
# exception), admin / crash shutdown, "the database system is starting up".
_UNAVAILABLE_STATES = ("57P01", "57P02", "57P03")


def database_unavailable(exc: BaseException) -> bool:
    """Is this the database being unreachable, as opposed to a query's own failure (a
    deadlock, a constraint, a serialization error...), which stays a bug or a conflict?"""
    if not isinstance(exc, (OperationalError, InterfaceError)):
        return False
    cause = exc.__cause__
    if isinstance(cause, psycopg.InterfaceError):
        return True  # the connection is closed
    if not isinstance(cause, psycopg.OperationalError):
        return False
    state = getattr(cause, "sqlstate", None)
    # No SQLSTATE: the client lost the connection (server closed it, connect failed, the
    # pool timed out waiting for a connection).
    return state is None or state.startswith("08") or state in _UNAVAILABLE_STATES


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    # MiddlewareMixin: usable sync and async, so an async view (the API's long-polls) holds no
    # thread while it waits.

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if not database_unavailable(exc):
            return None
        log.warning("%s %s: database unavailable (%s); answered 503", request.method, request.path, exc)
        if request.path.startswith(("/api/", "/agent/")) or "json" in request.headers.get("Accept", ""):
            response: HttpResponse = JsonResponse({"detail": MESSAGE}, status=503)
        else:
            response = HttpResponse(MESSAGE, status=503, content_type="text/plain; charset=utf-8")
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
