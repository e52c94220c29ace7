"""The agent's claim long-poll, shared by the Django view (agent_api.claim) and the bare ASGI
app that serves it in production (`claim_asgi`).

Why a bare ASGI app: under Django's handler an async view still passes through the sync
middleware stack (sessions, CSRF, auth, messages...), each layer a thread hop on the way in
and out: about 10 ms between the moment a pushed job is taken and the moment the agent has
it. The agent API needs none of that middleware, and this is the Confirm -> apply hot path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import ThreadSensitiveContext
from channels.db import database_sync_to_async
from django.conf import settings

from agents_app.models import Agent
from agents_app.services.agents import agent_by_token
from iacplatform import live, wakeups
from iacplatform.db_outage import MESSAGE as DB_MESSAGE
from iacplatform.db_outage import RETRY_AFTER_SECONDS, database_unavailable
from iacplatform.errors import Gone, Invalid
from tasks_app.dispatch import agent_reports

log = logging.getLogger(__name__)

NO_TOKEN = "unknown or missing agent token (Authorization: Bearer <agent token>)"


def parse_wait(raw: str | None) -> float:
    """Seconds to wait, clamped to IAC_CLAIM_LONGPOLL_SECONDS; Invalid when not a number."""
    try:
        wait = float(raw) if raw not in (None, "") else settings.IAC_CLAIM_LONGPOLL_SECONDS
    except ValueError as exc:
        raise Invalid("query parameter 'wait' must be a number of seconds") from exc
    return max(0.0, min(wait, settings.IAC_CLAIM_LONGPOLL_SECONDS))


def parse_max(raw: str | None) -> int:
    """How many jobs the agent can take at once (its free slots): 1 to 16."""
    if raw in (None, ""):
        return 1
    if not raw.isdigit() or not 1 <= int(raw) <= 16:
        raise Invalid("query parameter 'max' must be a whole number from 1 to 16")
    return int(raw)


# Without Redis (unreachable at subscribe, during the wait or at take) the poll reads the
# database this often until its deadline: Redis costs speed, never progress.
DB_POLL_SECONDS = 1.0


@dataclass
class Claimed:
    """A long-poll's answer: jobs to start, and cancel orders pushed by Cancel (run_cancel)
    for jobs the agent runs: they come back the moment they are pushed, so terraform gets
    its SIGINT within a second instead of at the agent's next heartbeat (which repeats them)."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    cancel: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.jobs or self.cancel)

    def body(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "cancel": self.cancel} if self.cancel else {"jobs": self.jobs}


async def claim_longpoll(agent: Agent, wait: float, limit: int = 1) -> Claimed:
    """Up to `limit` jobs for the agent and its pushed cancel orders, or an empty answer
    after `wait` seconds. Raises Gone.

    With Redis: subscribe to the wake-up channels first, then take the jobs pushed by Confirm
    and claim queued ones, then wait: a job pushed or queued between the attempt and the wait
    still wakes us. Without it: claim from the database about once a second, and try Redis
    again whenever the breaker allows (iacplatform.wakeups), going back to wake-ups once it
    answers. Never an error because of Redis."""
    deadline = time.monotonic() + wait
    claim = database_sync_to_async(agent_reports.agent_claim_if_queued)
    token = uuid.uuid4().hex  # this poll's, for wakeups.take_all
    while True:
        if wakeups.redis_available():
            try:
                return await _claim_with_wakeups(agent, deadline, limit, token)
            except wakeups.REDIS_ERRORS as exc:
                wakeups.redis_failed(exc, "the claim long-poll")
                if wakeups.redis_available() and time.monotonic() < deadline:
                    # A slow answer, not an outage (the breaker is closed): on Redis again at
                    # once, before any database claim, so that a take whose answer was lost
                    # (a push taken from Redis) is handed out by this poll's retry. Each try
                    # costs a timeout; repeated, they open the breaker.
                    continue
        jobs = await claim(agent=agent, limit=limit)
        if jobs:
            return Claimed(jobs)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Claimed()
        await asyncio.sleep(min(DB_POLL_SECONDS, remaining))


async def _claim_with_wakeups(agent: Agent, deadline: float, limit: int, token: str) -> Claimed:
    """The poll on Redis wake-ups until `deadline`; raises wakeups.REDIS_ERRORS when Redis
    fails (nothing is claimed at that moment: the caller falls back to the database)."""
    client = wakeups.async_client()
    pubsub = client.pubsub()
    woken = False
    try:
        await pubsub.subscribe(wakeups.agent_channel(agent.id), wakeups.pool_channel(agent.pool_id))
        wakeups.redis_ok()
        while True:
            jobs, cancel = await wakeups.take_all(client, agent.id, limit, token)
            answer = Claimed(jobs=jobs, cancel=cancel)
            if answer:  # the hot path: answer at once, no database round
                return answer
            answer.jobs = await database_sync_to_async(agent_reports.agent_claim_if_queued)(agent=agent, limit=limit,
                                                                                     woken=woken)
            if answer:
                return answer
            channel = await _wait_for_wakeup(client, pubsub, deadline)
            if channel is None:
                return Claimed()
            # Woken on its own channel (a push, a slot of its freed, or work queued while it has
            # an idle slot: agents.pool_wake): claim at once. A message on the pool's channel
            # (the sweep's, or an older web process's) first asks whether this agent has an
            # idle slot: on a busy pool most have none, and each full claim locks the agent's
            # row, which its own results and Confirm's assignment wait for.
            woken = channel == wakeups.agent_channel(agent.id)
    finally:
        # Closed after the answer is on its way (a task of its own): unsubscribing is a Redis
        # round trip the agent need not wait for.
        _background(_close(pubsub, client))


async def _close(pubsub: Any, client: Any) -> None:
    try:
        await pubsub.aclose()
        await client.aclose()
    except wakeups.REDIS_ERRORS:  # closing a connection to a dead server
        pass


_tasks: set[asyncio.Task] = set()  # referenced until done (the loop keeps only weak references)


def _background(coroutine: Any) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _wait_for_wakeup(client: Any, pubsub: Any, deadline: float) -> str | None:
    """Wait for a message on the subscribed channels: the channel it came on, None at the
    deadline. Checked every DB_POLL_SECONDS: a hung server sends no error to a reader, so
    when another call in this process found Redis down meanwhile, raise (the poll falls back
    to the database instead of waiting for wake-ups that cannot come); when one only timed
    out (slow, or hung?), ask Redis on this poll's own connection (a PING), whose timeout
    raises too and counts towards the breaker."""
    while (remaining := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(remaining, DB_POLL_SECONDS))
        if message:
            channel = message["channel"]
            return channel.decode() if isinstance(channel, bytes) else str(channel)
        if not wakeups.redis_available():
            raise wakeups.RedisUnavailable("Redis failed elsewhere in this process while the poll waited")
        if wakeups.redis_suspect():
            await client.ping()
            wakeups.redis_ok()
    return None


async def _send_json(send: Any, status: int, body: dict | None,
                     extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode() if body is not None else b""
    headers = ([(b"content-type", b"application/json")] if body is not None else []) + (extra_headers or [])
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def claim_asgi(scope: dict, receive: Any, send: Any) -> None:
    """POST /agent/v1/claim?wait=S as a bare ASGI app (same contract as the Django view).

    Each poll gets its own thread for its database calls (a ThreadSensitiveContext, as
    Django gives each request): without it every `database_sync_to_async` call of every
    agent's poll would queue on the one shared sync thread, behind each other and behind
    any slow request, and a claim would wait for unrelated work."""
    async with ThreadSensitiveContext():
        # The claim's live-page updates (run planning, job and slot running) go out after
        # the answer: the agent waits for the answer before it starts terraform.
        outbox = live.open_outbox()
        try:
            await _claim_asgi(scope, receive, send)
        except Exception as exc:
            # PostgreSQL restarting: 503 + Retry-After, as the Django views answer
            # (iacplatform.db_outage); the agent's client retries. Anything else is a bug.
            if not database_unavailable(exc):
                raise
            log.warning("claim: database unavailable (%s); answered 503", exc)
            await _send_json(send, 503, {"detail": DB_MESSAGE},
                             extra_headers=[(b"retry-after", str(RETRY_AFTER_SECONDS).encode())])
        finally:
            await live.close_outbox(outbox, "live updates after an agent's claim")


async def _claim_asgi(scope: dict, receive: Any, send: Any) -> None:
    while True:  # the body is empty; drain it all the same
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        if not message.get("more_body"):
            break
    if scope["method"] != "POST":
        await _send_json(send, 405, {"detail": "use POST"})
        return
    auth = dict(scope["headers"]).get(b"authorization", b"").decode()
    token = auth[7:].strip() if auth.startswith("Bearer ") else ""
    agent = await database_sync_to_async(agent_by_token)(token)
    if agent is None:
        await _send_json(send, 401, {"detail": NO_TOKEN})
        return
    query = parse_qs(scope.get("query_string", b"").decode())
    try:
        wait = parse_wait(query.get("wait", [None])[0])
        limit = parse_max(query.get("max", [None])[0])
    except Invalid as exc:
        await _send_json(send, 400, {"detail": str(exc)})
        return
    # A poll whose agent went away (killed, restarted) must stop at once: otherwise it would
    # take the next job pushed to that agent and answer a socket nobody reads, and the job
    # would sit unacknowledged until the timeout sends it cold. The restarted process polls
    # with the same identity and must be the one to get it.
    poll = asyncio.ensure_future(claim_longpoll(agent, wait, limit))
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({poll, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not poll.done():
            poll.cancel()
    if not poll.done() or poll.cancelled():
        return
    try:
        answer = poll.result()
    except Gone as exc:
        await _send_json(send, 410, {"detail": str(exc), "reregister": True})
        return
    await _send_json(send, 200 if answer else 204, answer.body() if answer else None)
