"""The REST API's one mapping from errors to responses: the project's own errors
(iacplatform.errors) by their status, DRF's as DRF says. Every API error is JSON with a `detail` message that says what is wrong; validation
errors also name the fields (`errors`: {field: [messages]})."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import JsonResponse
from django.views.defaults import page_not_found
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from iacplatform.errors import Invalid, PlatformError


def flatten_errors(detail: Any) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {flatten_errors(v)}" for k, v in detail.items())
    if isinstance(detail, list):
        return " ".join(flatten_errors(v) for v in detail)
    return str(detail)


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, Invalid) and exc.fields:
        return Response({"detail": str(exc), "errors": exc.fields}, status=exc.status)
    if isinstance(exc, PlatformError):
        # The project's own errors (raised by services) carry their status.
        return Response({"detail": str(exc)}, status=exc.status)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = response.data
        if isinstance(errors, list):
            errors = {"non_field_errors": errors}
        response.data = {"detail": flatten_errors(errors), "errors": errors}
    elif not (isinstance(response.data, dict) and "detail" in response.data):
        response.data = {"detail": flatten_errors(response.data)}
    return response


def not_found(request: Any, exception: Exception | None = None) -> Any:
    """Django's 404 for a URL that matches no route (handler404): under /api/ the same JSON
    shape as every other API error (e.g. `/api/v1/runs/-1/`), elsewhere Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": f"no such URL: {request.path}"}, status=404)
    return page_not_found(request, exception)
