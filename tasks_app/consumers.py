"""Live run log over a websocket: join the group first, then backfill from the client's
offset, then send what each `log.appended` event adds. Joining before the backfill means no
chunk falls between the two; tracking the offset drops any overlap."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from iacplatform.errors import NotFound
from iacplatform.permissions import Action, run_for
from tasks_app.events import run_group
from tasks_app.selectors import LOG_PAGE_BYTES, run_log_read


def _may_read_run(user: Any, task_id: int) -> bool:
    try:
        run_for(user, Action.READ, task_id)
    except NotFound:
        return False
    return True


def _offset_param(query_string: bytes) -> int | None:
    """The `offset` query parameter (default 0), or None when it is not a byte offset."""
    values = parse_qs(query_string.decode(errors="replace"), keep_blank_values=True).get("offset", ["0"])
    value = values[-1]
    if not value.isascii() or not value.isdigit() or len(value) > 18:  # 18 digits fit in 63 bits
        return None
    return int(value)


class RunLogConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.task_id = int(self.scope["url_route"]["kwargs"]["task_id"])
        if not await database_sync_to_async(_may_read_run)(user, self.task_id):
            # The same answer for a run that does not exist and one the user may not read.
            await self.close(code=4404)
            return
        offset = _offset_param(self.scope.get("query_string", b""))
        if offset is None:
            # Accepted first, so that the client sees the code and the reason (a close before
            # the handshake reaches it as a bare HTTP 403). 4400: a bad request, in the
            # application range of close codes (4000-4999).
            await self.accept()
            await self.close(code=4400, reason="offset must be a non-negative integer")
            return
        self.offset = offset
        await self.channel_layer.group_add(run_group(self.task_id), self.channel_name)
        await self.accept()
        await self._send_new()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "task_id"):
            await self.channel_layer.group_discard(run_group(self.task_id), self.channel_name)

    async def log_appended(self, event: dict) -> None:
        await self._send_new()

    async def _send_new(self) -> None:
        # At most LOG_PAGE_BYTES per message: a backfill of a long log is sent in pages.
        while True:
            text, next_offset = await database_sync_to_async(run_log_read)(
                task_id=self.task_id, offset=self.offset, limit=LOG_PAGE_BYTES
            )
            if not text:
                return
            self.offset = next_offset
            await self.send_json({"text": text, "next_offset": next_offset})
