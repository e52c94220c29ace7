"""Django's ASGI handler, with each request for a sync view served the way WSGI serves it.

Under Django's ASGI handler a sync view still goes through the middleware chain in its async
form: every sync middleware (sessions, CSRF, auth, messages, ...) runs in `sync_to_async`,
a thread hop on the way in and another on the way out, some twenty per request. Each hop
waits for the event loop and the GIL: on a busy server (terraform's state calls, an agent's
log posts and a page's long-poll at once) that is most of a request's time and CPU. A
request for a sync view (all but the long-polls) here runs Django's sync handler, the same
middleware and view, in one thread hop. Async views (the run long-polls) keep the async path.

The live pages' group sends and the event publishes a sync request's units of work make at
their commits (iacplatform/unit_of_work.py) wait in the request's outbox (iacplatform/live.py)
and go out after its response, from the event loop, as the agent's claim does (tasks_app/dispatch/claim.py):
each is a hop to the event loop and a few Redis round trips, and they were taken before the
answer and before the wake-ups and pushes registered after them (Confirm's push to the warm
agent, a run's dispatch to the claim long-polls). The wake-ups themselves stay immediate.
"""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.http import HttpRequest, HttpResponseBase
from django.urls import Resolver404, get_resolver

from iacplatform import live


def serves_sync(request: HttpRequest) -> bool:
    """Is the view for this request a sync one (or none: the 404 page is sync)?"""
    try:
        match = get_resolver(getattr(request, "urlconf", None)).resolve(request.path_info)
    except Resolver404:
        return True
    return not iscoroutinefunction(match.func)


class HybridASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self.sync_handler = BaseHandler()
        self.sync_handler.load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        if serves_sync(request):
            outbox = live.open_outbox()
            try:
                # The request's own thread (Django gives each request a ThreadSensitiveContext).
                response = await sync_to_async(self.sync_handler.get_response, thread_sensitive=True)(request)
            except BaseException:
                await live.close_outbox(outbox)
                raise
            response._live_outbox = outbox  # sent by send_response, once the answer is out
            return response
        return await super().get_response_async(request)

    async def send_response(self, response: HttpResponseBase, send) -> None:
        try:
            await super().send_response(response, send)
        finally:
            outbox = getattr(response, "_live_outbox", None)
            if outbox is not None:
                await live.close_outbox(outbox)
