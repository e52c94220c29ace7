"""What every live page's websocket consumer shares: a cap on the sockets one user holds open,
and losing access while watching.

**The cap.** A user's sockets in this web process are counted from the handshake to the end
of the connection; past `IAC_WS_MAX_PER_USER` a new one is accepted and closed at once with
4429 (a close before the handshake reaches the browser without its code), which the page
turns into a message (static/js/live.js). Counted per process, not in Redis: nothing to leak when a process dies, no round
trip per connect; with several web processes a user may hold that many in each.

**Losing access.** A socket outlives the check made when it opened. Every change that can take
access away (a team's level on a workspace, a team's members, a user's account: active, staff,
deleted; from the API, the pages or the admin) sends `access.changed` to the group of each user
concerned, `user-<id>` (tasks_app/events.py), which every consumer of that user joins before it
checks access at connect, so no change falls between the two. On that message the consumer
reads the user again and asks its own check (`may_watch`); if it fails it closes with 4403
and forwards nothing after: the message comes through the same channel and in order before
anything published after the change, so the next log line is never delivered. Per forwarded
message this costs nothing; the re-check is one or two queries per change, per socket of the
users concerned."""

from __future__ import annotations

import collections
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model

from iacplatform.live import Close, user_group

# Open sockets per user id in this process (one event loop: no lock needed).
_open: collections.Counter[int] = collections.Counter()


def _user_id(scope: dict) -> int | None:
    user = scope.get("user")
    if user is None or not user.is_authenticated:
        return None
    return int(user.pk)


class LiveConsumer(AsyncWebsocketConsumer):
    """Subclasses implement `connect` as usual and `may_watch` (sync, may query): may this
    (freshly read, active) user still see what the socket shows?"""

    access_lost_reason = "you no longer have access to this page"
    _over_cap = False
    _closed = False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        user_id = _user_id(scope)
        if user_id is None:  # refused at connect by the subclass: nothing to count
            await super().__call__(scope, receive, send)
            return
        _open[user_id] += 1
        self._over_cap = _open[user_id] > settings.IAC_WS_MAX_PER_USER
        try:
            await super().__call__(scope, receive, send)
        finally:
            _open[user_id] -= 1
            if _open[user_id] <= 0:
                del _open[user_id]

    async def websocket_connect(self, message: dict) -> None:
        if self._over_cap:
            await self.accept()
            limit = settings.IAC_WS_MAX_PER_USER
            await self.close(code=Close.TOO_MANY,
                             reason=f"too many live pages open ({limit} per user): close some tabs, then reload")
            return
        self.user = self.scope.get("user")
        user_id = _user_id(self.scope)
        if user_id is not None:
            # Joined (by channels, before `connect`) ahead of any access check: a change after
            # the check reaches this socket.
            self.groups = [user_group(user_id)]
        await super().websocket_connect(message)

    async def dispatch(self, message: dict) -> None:
        # Closed by the server (access lost, too many): nothing more reaches the page, whatever
        # is still queued for this consumer.
        if self._closed and message["type"] != "websocket.disconnect":
            return
        await super().dispatch(message)

    async def send(self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False) -> None:
        if self._closed:  # e.g. a render that was under way in a task of the consumer
            return
        await super().send(text_data, bytes_data, close)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        # A plain int: Daphne's websocket library refuses an IntEnum (`Close`) as a close code.
        await super().close(code if code is None or isinstance(code, bool) else int(code), reason)

    async def access_changed(self, event: dict) -> None:
        if not await database_sync_to_async(self._still_allowed)():
            await self.close_access_lost()

    async def close_access_lost(self) -> None:
        await self.close(code=Close.ACCESS_LOST, reason=self.access_lost_reason)

    def _still_allowed(self) -> bool:
        user_id = _user_id(self.scope)
        user = get_user_model().objects.filter(pk=user_id).first() if user_id is not None else None
        if user is None or not user.is_active:
            return False
        # From now on every check of this socket sees the account as it is now (staff or not).
        self.user = self.scope["user"] = user
        return self.may_watch(user)

    def may_watch(self, user: Any) -> bool:
        raise NotImplementedError
