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

Fan-out: a `log.appended` message carries the chunk's text as the agent sent it (colour codes
included) and its offsets: data, never markup (tasks_app/events.py). The page's consumer
renders it (`logrender.log_html`: escaped, colours as classes) through a small per-process
cache keyed by the text, so the viewers of a chunk in one process share one render: the first
consumer to handle the message renders, the others (same event loop, right after) find it.
Rendering only in the consumer means whatever reaches the channel layer is shown as text.
A consumer reads from the database instead when the message does not continue exactly where
it is (a gap: a message lost or overtaken; an overlap) or carries no chunk (too big, or a
producer that only says the log grew).

Access: see iacplatform/live_consumer.py (a change of the viewer's access closes the socket
with 4403 before the next message; too many sockets of one user: 4429)."""

from __future__ import annotations

import functools
import json
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async

from iacplatform.errors import NotFound
from iacplatform.live import Close
from iacplatform.live_consumer import LiveConsumer
from iacplatform.permissions import Action, run_for
from tasks_app.events import run_group
from tasks_app.logrender import log_html, strip_ansi
from tasks_app.run_page import log_fragment, run_fragments_html
from tasks_app.selectors import LOG_PAGE_BYTES, run_log_read

# A chunk's renderings, shared by the viewers of one process: a message's viewers all handle
# it within a pass of the event loop, so a few recent chunks are enough. A carried chunk is at
# most events.LIVE_CHUNK_MAX_BYTES (agents post a few KiB): 64 of them, with their HTML, hold
# at worst some 20 MiB.
_chunk_html = functools.lru_cache(maxsize=64)(log_html)
_chunk_plain = functools.lru_cache(maxsize=64)(strip_ansi)


def _is_offset(value: object) -> bool:
    return type(value) is int and value >= 0


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


class _RunStream(LiveConsumer):
    offset: int
    # The database pages are read with the colour codes when the sender renders them.
    ansi = False
    access_lost_reason = "you no longer have access to this run"

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=Close.UNAUTHENTICATED)
            return
        self.task_id = int(self.scope["url_route"]["kwargs"]["task_id"])
        if not await database_sync_to_async(_may_read_run)(user, self.task_id):
            # The same answer for a run that does not exist and one the user may not read.
            await self.close(code=Close.NOT_FOUND)
            return
        offset = _offset_param(self.scope.get("query_string", b""))
        if offset is None:
            # Accepted first, so that the client sees the code and the reason (a close before
            # the handshake reaches it as a bare HTTP 403). 4400: a bad request, in the
            # application range of close codes (4000-4999).
            await self.accept()
            await self.close(code=Close.BAD_REQUEST, reason="offset must be a non-negative integer")
            return
        self.offset = offset
        await self.channel_layer.group_add(run_group(self.task_id), self.channel_name)
        await self.accept()
        await self._send_from_database()
        await self.connected()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "task_id"):
            await self.channel_layer.group_discard(run_group(self.task_id), self.channel_name)

    def may_watch(self, user: Any) -> bool:
        return _may_read_run(user, self.task_id)

    async def log_appended(self, event: dict) -> None:
        if not hasattr(self, "offset"):
            return
        start, end, text = event.get("start"), event.get("end"), event.get("text")
        if _is_offset(end) and end <= self.offset:
            return  # already sent (by a database read that overtook this message)
        if start == self.offset and _is_offset(end) and isinstance(text, str):
            await self.send_chunk(text, end)
            self.offset = end
            return
        await self._send_from_database()

    async def run_changed(self, event: dict) -> None:
        pass

    async def dispatch_changed(self, event: dict) -> None:
        pass

    async def connected(self) -> None:
        """After the backfill: what else the socket sends first."""

    async def send_chunk(self, text: str, end: int) -> None:
        """A chunk from a group message: its text as stored (with colour codes)."""
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

    async def send_chunk(self, text: str, end: int) -> None:
        await self.send_json({"text": _chunk_plain(text), "next_offset": end})

    async def send_page(self, text: str, next_offset: int) -> None:
        await self.send_json({"text": text, "next_offset": next_offset})

    async def send_json(self, content: dict) -> None:
        await self.send(text_data=json.dumps(content))


class RunPageConsumer(_RunStream):
    """The run page's fragments (HTML text frames)."""

    ansi = True

    async def send_chunk(self, text: str, end: int) -> None:
        await self.send(text_data=log_fragment(_chunk_html(text), end))

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
            html = await database_sync_to_async(run_fragments_html)(self.task_id, self.user)
        except NotFound:
            await self.close_access_lost()  # lost access to the run meanwhile (or it was deleted)
            return
        await self.send(text_data=html)
