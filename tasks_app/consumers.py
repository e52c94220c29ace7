"""Live runs over websockets: join the run's group first, then backfill from the client's
offset, then forward what each event adds. Joining before the backfill means no chunk falls
between the two; tracking the offset drops any overlap.

Two sockets share that logic (`_RunStream`):
- `RunLogConsumer` (`/ws/runs/<id>/log/`): the log as JSON `{"text", "next_offset"}`, text
  without colour codes (for scripts);
- `RunPageConsumer` (`/ws/runs/<id>/`): the run page's HTML fragments, swapped by id by the
  htmx ws extension: log pieces appended to `#run-log`, and on connect and on every
  `run.changed` / `dispatch.changed` the status badge, waiting line, timeline, plan, jobs,
  apply facts, actions and the Confirm dialog.

Fan-out: a `log.appended` message carries the chunk as the agent sent it, with its offsets
and its HTML rendered once by the producer (tasks_app/events.py); each consumer forwards it.
A consumer reads from the database instead when the message does not continue exactly where
it is (a gap: a message lost or overtaken; an overlap) or carries no chunk (too big, or a
producer that only says the log grew)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from iacplatform.errors import NotFound
from iacplatform.permissions import Action, run_for
from tasks_app.events import run_group
from tasks_app.logrender import log_html
from tasks_app.run_page import log_fragment, run_fragments_html
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


class _RunStream(AsyncWebsocketConsumer):
    offset: int
    # The database pages are read with the colour codes when the sender renders them.
    ansi = False

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
        await self._send_from_database()
        await self.connected()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "task_id"):
            await self.channel_layer.group_discard(run_group(self.task_id), self.channel_name)

    async def log_appended(self, event: dict) -> None:
        if not hasattr(self, "offset"):
            return
        start, end = event.get("start"), event.get("end")
        if isinstance(end, int) and end <= self.offset:
            return  # already sent (by a database read that overtook this message)
        if start == self.offset and isinstance(end, int) and self._carried(event):
            await self.send_chunk(event, end)
            self.offset = end
            return
        await self._send_from_database()

    async def run_changed(self, event: dict) -> None:
        pass

    async def dispatch_changed(self, event: dict) -> None:
        pass

    async def connected(self) -> None:
        """After the backfill: what else the socket sends first."""

    def _carried(self, event: dict) -> bool:
        raise NotImplementedError

    async def send_chunk(self, event: dict, end: int) -> None:
        raise NotImplementedError

    async def send_page(self, text: str, next_offset: int) -> None:
        raise NotImplementedError

    async def _send_from_database(self) -> None:
        # At most LOG_PAGE_BYTES per message: a backfill of a long log is sent in pages.
        while True:
            text, next_offset = await database_sync_to_async(run_log_read)(
                task_id=self.task_id, offset=self.offset, limit=LOG_PAGE_BYTES, ansi=self.ansi
            )
            if next_offset <= self.offset:
                return
            self.offset = next_offset
            await self.send_page(text, next_offset)


class RunLogConsumer(_RunStream):
    """The log as JSON messages `{"text", "next_offset"}`."""

    def _carried(self, event: dict) -> bool:
        return "text" in event

    async def send_chunk(self, event: dict, end: int) -> None:
        await self.send_json({"text": event["text"], "next_offset": end})

    async def send_page(self, text: str, next_offset: int) -> None:
        await self.send_json({"text": text, "next_offset": next_offset})

    async def send_json(self, content: dict) -> None:
        await self.send(text_data=json.dumps(content))


class RunPageConsumer(_RunStream):
    """The run page's fragments (HTML text frames)."""

    ansi = True

    def _carried(self, event: dict) -> bool:
        return "html" in event

    async def send_chunk(self, event: dict, end: int) -> None:
        await self.send(text_data=log_fragment(event["html"], end))

    async def send_page(self, text: str, next_offset: int) -> None:
        await self.send(text_data=log_fragment(log_html(text), next_offset))

    async def connected(self) -> None:
        await self._send_fragments()

    async def run_changed(self, event: dict) -> None:
        await self._send_fragments()

    async def dispatch_changed(self, event: dict) -> None:
        await self._send_fragments()

    async def _send_fragments(self) -> None:
        try:
            html = await database_sync_to_async(run_fragments_html)(self.task_id, self.scope["user"])
        except NotFound:
            await self.close(code=4404)  # the user lost access to the run meanwhile
            return
        await self.send(text_data=html)
