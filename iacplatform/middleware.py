"""Remembers where the current request came from, so that every audit event written while
serving it records the address without each service taking the request as an argument."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse

current_address: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_address", default=None)


def client_address(request: HttpRequest) -> str | None:
    """REMOTE_ADDR, or the last X-Forwarded-For entry when IAC_TRUST_X_FORWARDED_FOR is set:
    the one our proxy appended (earlier entries come from the client and can be forged)."""
    if getattr(settings, "IAC_TRUST_X_FORWARDED_FOR", False):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            return forwarded.split(",")[-1].strip() or None
    return request.META.get("REMOTE_ADDR") or None


class RequestAddressMiddleware:
    # Sync and async: an async view (the API's long-polls) then holds no thread while it waits.
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        reset = current_address.set(client_address(request))
        try:
            return self.get_response(request)
        finally:
            current_address.reset(reset)

    async def __acall__(self, request: HttpRequest) -> Any:
        reset = current_address.set(client_address(request))
        try:
            return await self.get_response(request)
        finally:
            current_address.reset(reset)
