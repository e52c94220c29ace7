"""Live run log over a websocket: join the group first, then backfill from the client's
offset, then send what each `log.appended` event adds. Joining before the backfill means no
chunk falls between the two; tracking the offset drops any overlap."""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from tasks_app.events import run_group
from tasks_app.selectors import run_log_read


class RunLogConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.task_id = int(self.scope["url_route"]["kwargs"]["task_id"])
        qs = self.scope.get("query_string", b"").decode()
        self.offset = int(qs.split("offset=")[1].split("&")[0]) if "offset=" in qs else 0
        await self.channel_layer.group_add(run_group(self.task_id), self.channel_name)
        await self.accept()
        await self._send_new()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "task_id"):
            await self.channel_layer.group_discard(run_group(self.task_id), self.channel_name)

    async def log_appended(self, event: dict) -> None:
        await self._send_new()

    async def _send_new(self) -> None:
        text, next_offset = await database_sync_to_async(run_log_read)(task_id=self.task_id, offset=self.offset)
        if text:
            self.offset = next_offset
            await self.send_json({"text": text, "next_offset": next_offset})
