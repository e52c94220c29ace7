"""The live pool page over a websocket (site admins only): join the pool's group, send the
page's live fragments at once (the backfill: the whole current state), then re-render them
on each `dispatch.changed` of the pool (iacplatform/pool_events.py).

The fragments are server-rendered HTML whose root elements carry an `id` and
`hx-swap-oob="true"`: the htmx websocket extension swaps each one by id. A fragment is the
state read from PostgreSQL at render time, not a delta, so a missed or late event costs
nothing but an update: the next render (or a reconnect) shows the truth.

Bursts are coalesced: a run that starts marks its job, its slot and its warmup within a few
milliseconds, and a re-render per event would read the database once per event per viewer.
The first event after a quiet spell renders at once; the ones that follow within
COALESCE_SECONDS of that render share a single render at its end.

A viewer who stops being a site admin is closed with 4403 at the next render or at once on
the `access.changed` of the change (iacplatform/live_consumer.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.http import HttpRequest
from django.middleware.csrf import get_token
from django.template.loader import render_to_string

from agents_app.models import AgentPool
from agents_app.selectors import pool_page
from iacplatform.live import Close, pool_group
from iacplatform.live_consumer import LiveConsumer
from iacplatform.permissions import is_site_admin

log = logging.getLogger(__name__)

COALESCE_SECONDS = 0.1
# Relative times ("last heartbeat 4 s ago") age without any event: a quiet pool's page is
# re-rendered this often too.
REFRESH_SECONDS = 15.0
FRAGMENTS = (
    "agents_app/_pool_freeze.html",
    "agents_app/_pool_slots.html",
    "agents_app/_pool_agents.html",
    "agents_app/_pool_decisions.html",
)


def _may_watch(user: Any, pool_id: int) -> bool:
    return is_site_admin(user) and AgentPool.objects.filter(id=pool_id).exists()


def _csrf_token(scope: dict) -> str:
    """A CSRF token for the forms inside the fragments (Lift now), from the browser's CSRF
    cookie: the same secret the page's own forms were masked with."""
    request = HttpRequest()
    cookie = scope.get("cookies", {}).get(settings.CSRF_COOKIE_NAME)
    if cookie:
        request.META["CSRF_COOKIE"] = cookie
    return get_token(request)


def render_pool_fragments(pool_id: int, csrf_token: str = "", *, user_id: int | None = None) -> str | None:
    """The pool page's live fragments, concatenated; None when the pool is gone or the user
    (when given) is no longer a site admin: a socket outlives the check made at connect."""
    if user_id is not None and not is_site_admin(get_user_model().objects.filter(id=user_id).first()):
        return None
    pool = AgentPool.objects.filter(id=pool_id).first()
    if pool is None:
        return None
    context = pool_page(pool).context()
    context["csrf_token"] = csrf_token
    return "".join(render_to_string(name, context) for name in FRAGMENTS)


class PoolConsumer(LiveConsumer):
    access_lost_reason = "you are no longer a site admin"

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=Close.UNAUTHENTICATED)
            return
        self.pool_id = int(self.scope["url_route"]["kwargs"]["pool_id"])
        if not await database_sync_to_async(_may_watch)(user, self.pool_id):
            # The same answer for a pool that does not exist and a user who may not see pools.
            await self.close(code=Close.NOT_FOUND)
            return
        self.csrf_token = _csrf_token(self.scope)
        self.pending: asyncio.Task | None = None
        self.last_render = 0.0
        # Join first, then render: a change between the two is in the render or in an event.
        await self.channel_layer.group_add(pool_group(self.pool_id), self.channel_name)
        self.joined = True
        await self.accept()
        await self._render()
        self.refresher = asyncio.create_task(self._refresh())

    async def disconnect(self, code: int) -> None:
        if getattr(self, "joined", False):
            await self.channel_layer.group_discard(pool_group(self.pool_id), self.channel_name)
            self.joined = False
        for task in (getattr(self, "pending", None), getattr(self, "refresher", None)):
            if task is not None:
                task.cancel()

    def may_watch(self, user: Any) -> bool:
        return _may_watch(user, self.pool_id)

    async def dispatch_changed(self, event: dict) -> None:
        self._schedule()

    def _schedule(self) -> None:
        if self.pending is None or self.pending.done():
            self.pending = asyncio.create_task(self._render_soon())

    async def _render_soon(self) -> None:
        delay = self.last_render + COALESCE_SECONDS - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
        # From here on a new event schedules another render: this one may read too early.
        self.pending = None
        try:
            await self._render()
        except Exception:  # noqa: BLE001 - a failed render must not kill the socket; the next one may work
            log.exception("rendering the live fragments of pool %s failed", self.pool_id)

    async def _render(self) -> None:
        self.last_render = asyncio.get_running_loop().time()
        html = await database_sync_to_async(render_pool_fragments)(self.pool_id, self.csrf_token,
                                                                   user_id=self.scope["user"].id)
        if html is None:
            await self.close_access_lost()
            return
        await self.send(text_data=html)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            self._schedule()
