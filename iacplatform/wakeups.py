"""Wake-ups through Redis pub/sub: "a job is waiting for agent X / for pool P".

The claim long-poll subscribes to its agent's and its pool's channels, then tries to claim,
then waits for a message: subscribing first means a wake-up published between the claim
attempt and the wait is never lost. No polling interval sits on the Confirm -> apply path.

Redis is an accelerator, never the record (PostgreSQL is), and it holds no secret in clear:
a pushed job's payload (its variables, its state credential) is sealed with a key Redis never
sees (`crypto.seal`) and opened by the long-poll that takes it. Every call here is best effort.
None raises because of Redis; each has short connect and read timeouts (`REDIS_TIMEOUT`), and
a small circuit breaker skips Redis for `BREAKER_SECONDS` once it is found down (a refused
connection, or timeouts that repeat with nothing answered: not one slow answer, which costs
that call only), so that with Redis down a request pays a few milliseconds, not a timeout per
call. One warning is logged when
an outage starts and one when Redis answers again, not one per call. Callers that must know
(Confirm's push) get a boolean and take the slow path through the database themselves.

The run and pool event publishes a unit of work makes (iacplatform/unit_of_work.py) go out
after its commit, after the answer of the request it belongs to (`publish_all`, from the
request's outbox: iacplatform/live.py). The wake-ups of agents and pools and the pushes never
wait: they start work.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from typing import Any

import redis
import redis.asyncio as aredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from iacplatform import crypto

log = logging.getLogger(__name__)

# Well under a second: a local Redis answers in well under a millisecond, and a dead one
# (refused connection, missing socket) fails at once; only a black-holed host waits this long.
REDIS_TIMEOUT = 0.25
# After Redis was found down, it is not asked again for this long (then one call tries it again).
BREAKER_SECONDS = 1.5
# A timeout is not evidence of an outage: on a machine whose cores terraform keeps busy, a
# call's answer can wait longer than REDIS_TIMEOUT for this process to be scheduled, while
# Redis itself is fine. It costs that call only. Timeouts open the breaker only when they
# repeat (at least TIMEOUTS_TO_OPEN) and nothing has answered for HUNG_AFTER_SECONDS: a hung
# server. A refused or dropped connection (the socket is gone, the port closed) opens it at
# once. Opening it on one slow answer would turn every push off for BREAKER_SECONDS at a
# time on a busy pool, and most confirmed applies would then start cold.
TIMEOUTS_TO_OPEN = 3
HUNG_AFTER_SECONDS = 2.0
# A slow call is logged (INFO) at most this often, with how many there were since.
SLOW_LOG_SECONDS = 30.0


class RedisUnavailable(redis.ConnectionError):
    """Raised by our own code when the breaker says Redis is away (tasks_app.dispatch.claim)."""


# What "Redis is unreachable" looks like (OSError: a socket error redis-py did not wrap).
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)


def is_timeout(exc: BaseException) -> bool:
    """A call that got no answer in time (redis-py's TimeoutError, asyncio's wait_for): the
    connection was there; the answer was late."""
    return isinstance(exc, (redis.TimeoutError, TimeoutError))


def describe(exc: BaseException) -> str:
    """What a failed call saw, never empty (asyncio's TimeoutError has no message)."""
    text = str(exc).strip()
    if text:
        return f"{type(exc).__name__}: {text}"
    if is_timeout(exc):
        return f"{type(exc).__name__}: no answer in time"
    return type(exc).__name__


def _retry() -> Retry:
    # One quick retry: a pooled connection left over from before a Redis restart fails once,
    # and a fresh one then works. More retries would only make a real outage slower.
    return Retry(ExponentialBackoff(cap=0.05, base=0.01), 1)


class _Breaker:
    """Open (skip Redis) for BREAKER_SECONDS on evidence that Redis is down: a refused or
    dropped connection, or timeouts that repeat with no answer in between (see
    TIMEOUTS_TO_OPEN). One log line per outage, naming what was seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed_at = 0.0  # monotonic time from which Redis may be asked again
        self._outage = False
        self._answered_at = time.monotonic()  # the last call Redis answered
        self._timeouts = 0  # calls timed out since then
        self._slow = 0  # timeouts not yet logged
        self._slow_logged_at = 0.0

    def allows(self) -> bool:
        return time.monotonic() >= self._closed_at

    def suspect(self) -> bool:
        """A call timed out and none has been answered since: a waiting subscriber should
        check its own connection (a hung server sends it no error)."""
        return self._timeouts > 0

    def failed(self, exc: BaseException, what: str) -> None:
        now = time.monotonic()
        seen = describe(exc)
        with self._lock:
            if is_timeout(exc) and not self._outage:
                self._timeouts += 1
                silent = now - self._answered_at
                if self._timeouts < TIMEOUTS_TO_OPEN or silent < HUNG_AFTER_SECONDS:
                    self._slow += 1
                    log_slow = now - self._slow_logged_at >= SLOW_LOG_SECONDS
                    if log_slow:
                        slow, self._slow, self._slow_logged_at = self._slow, 0, now
                    opened = False
                else:
                    seen = (f"{self._timeouts} calls timed out and none was answered for {silent:.1f}s; "
                            f"the last, {what}: {seen}")
                    opened, log_slow = True, False
            else:
                opened, log_slow = True, False
            if opened:
                self._closed_at = now + BREAKER_SECONDS
                first, self._outage = not self._outage, True
        if not opened:
            if log_slow:
                log.info("Redis slow: %s got no answer within its timeout (%s; %d such call(s) since the last "
                         "line); only that call is skipped, Redis is not considered down", what, seen, slow)
            return
        if first:
            log.warning("Redis unreachable (%s failed: %s): wake-ups and pushes are skipped and agents "
                        "claim from the database until it is back", what, seen)

    def succeeded(self) -> None:
        self._answered_at = time.monotonic()
        self._timeouts = 0
        if self._outage:
            with self._lock:
                back, self._outage = self._outage, False
            if back:
                log.warning("Redis answers again: wake-ups and pushes resume")

    def reset(self) -> None:
        with self._lock:
            self._closed_at, self._outage = 0.0, False
            self._answered_at, self._timeouts, self._slow, self._slow_logged_at = time.monotonic(), 0, 0, 0.0


breaker = _Breaker()


def redis_available() -> bool:
    """False while the breaker is open (Redis was found down less than BREAKER_SECONDS ago)."""
    return breaker.allows()


def redis_suspect() -> bool:
    """A call timed out and none has been answered since (see _Breaker.suspect)."""
    return breaker.suspect()


def redis_failed(exc: BaseException, what: str) -> None:
    breaker.failed(exc, what)


def redis_ok() -> None:
    breaker.succeeded()


def agent_channel(agent_id: int) -> str:
    return f"iac:wake:agent:{agent_id}"


def pool_channel(pool_id: int) -> str:
    return f"iac:wake:pool:{pool_id}"


# No CLIENT SETINFO on connect (redis-py's default sends the library's name and version):
# one round trip less for every new connection, and a poll opens two.
NO_DRIVER_INFO: dict[str, Any] = {"driver_info": None}


@functools.cache
def _client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT,
                                retry=_retry(), **NO_DRIVER_INFO)


def _client() -> redis.Redis:
    return _client_for(settings.REDIS_URL)


def _best_effort(what: str, call) -> bool:
    """Run `call(client)`; False (and the breaker opens) when Redis is unreachable."""
    if not breaker.allows():
        return False
    try:
        call(_client())
    except REDIS_ERRORS as exc:
        breaker.failed(exc, what)
        return False
    breaker.succeeded()
    return True


def mark(key: str, seconds: int) -> bool:
    """Set a short-lived flag (best effort: False when Redis is unreachable)."""
    return _best_effort("a mark", lambda c: c.set(key, b"1", ex=seconds))


def marked(key: str) -> bool | None:
    """Whether the flag is set; None when Redis cannot tell."""
    found: list[bool] = []
    if not _best_effort("a mark's read", lambda c: found.append(bool(c.exists(key)))):
        return None
    return found[0]


def wake_agent(agent_id: int) -> None:
    _best_effort("a wake-up", lambda c: c.publish(agent_channel(agent_id), b"1"))


def wake_pool(pool_id: int) -> None:
    _best_effort("a wake-up", lambda c: c.publish(pool_channel(pool_id), b"1"))


def wake_agents(agent_ids: list[int]) -> None:
    """Wake these agents' long-polls, in one round trip (agents_app.services.agents.pool_wake)."""
    if not agent_ids:
        return

    def publish(client: redis.Redis) -> None:
        pipe = client.pipeline(transaction=False)
        for agent_id in agent_ids:
            pipe.publish(agent_channel(agent_id), b"1")
        pipe.execute()

    _best_effort("a wake-up", publish)


def _publish(channel: str, message: str | bytes, label: str) -> bool:
    return _best_effort(label, lambda c: c.publish(channel, message))


async def publish_all(messages: list[tuple[str, str | bytes]], label: str = "publishes after a request") -> bool:
    """Publish each (channel, message), in order, in one round trip, from the event loop;
    False (and the breaker opens) when Redis is unreachable."""
    if not messages:
        return True
    if not breaker.allows():
        return False
    client = async_client()
    try:
        pipe = client.pipeline(transaction=False)
        for channel, message in messages:
            pipe.publish(channel, message)
        await pipe.execute()
    except REDIS_ERRORS as exc:
        breaker.failed(exc, label)
        return False
    finally:
        try:
            await client.aclose()
        except REDIS_ERRORS:
            pass
    breaker.succeeded()
    return True


def publish(channel: str, message: str | bytes, label: str = "a publish") -> bool:
    """`label` names the call in the outage warning."""
    return _publish(channel, message, label)


def run_channel(task_id: int) -> str:
    """A run's events for the API's long-polls (`?wait=`): "log" (its log grew) or
    "status:<new status>" (a long-poll waiting for another status skips its check),
    published by the run's unit of work after its commit (runs.run_transition, events.run_log_appended)."""
    return f"iac:run:{task_id}"


def pushed_list(agent_id: int) -> str:
    return f"iac:push:agent:{agent_id}"


def pushed_key(job_id: int) -> str:
    return f"iac:push:job:{job_id}"


PUSH_KEEP_SECONDS = 120


def push_job(agent_id: int, job_id: int, payload: dict) -> bool:
    """Hand an assigned job to the agent's long-poll: its payload, sealed (`crypto.seal`:
    whoever reads Redis, MONITOR on a shared one, learns nothing of its variables or its
    state credential, and cannot forge a job). Returns False only when the push
    certainly did not reach Redis (the breaker is open, or no connection could be made:
    nothing was sent), so the agent cannot get the job this way and the caller sends it
    back to the queue at once (runs.apply_push). A push sent but not answered (a read
    timeout, the server dying mid-reply) may be in Redis and be taken: True, and late is not
    lost: the sweep takes an untaken push back, or the agent's heartbeats tell.

    Keyed by job: the push waits in its own key, and the agent's list holds the ids, so
    two applies confirmed a moment apart for runs warm on the same agent are both delivered
    (a single key per agent would let the second overwrite the first, which would then go
    cold)."""
    # The key outlives the ack timeout: the sweep takes an untaken push back (take_back) to
    # know for sure that the agent never got it; the TTL only collects what nobody took.
    ttl_ms = int((settings.IAC_TARGET_CLAIM_TIMEOUT_SECONDS + PUSH_KEEP_SECONDS) * 1000)
    data = crypto.seal(json.dumps(payload).encode())
    if not breaker.allows():
        return False
    client = _client()
    try:
        # Connected (a stale pooled connection replaced) before anything is sent: a failure
        # here means Redis has nothing of this push.
        conn = client.connection_pool.get_connection()
    except REDIS_ERRORS as exc:
        breaker.failed(exc, "a push")
        return False
    pipe = client.pipeline(transaction=True)
    pipe.connection = conn  # released by reset()
    try:
        pipe.set(pushed_key(job_id), data, px=ttl_ms)
        pipe.rpush(pushed_list(agent_id), job_id)
        pipe.pexpire(pushed_list(agent_id), ttl_ms)
        pipe.publish(agent_channel(agent_id), b"1")
        pipe.execute()
    except REDIS_ERRORS as exc:
        breaker.failed(exc, "a push")
        log.warning("push of job %s to agent %s: sent, but Redis did not answer (%s); the sweep or the "
                    "agent's heartbeats will tell whether it arrived", job_id, agent_id, describe(exc))
        return True
    finally:
        pipe.reset()
    breaker.succeeded()
    return True


# A poll's take, in one round trip: pop job ids until `limit` pushes that are still there
# (an expired one was re-queued; GETDEL hands each push out once whatever races between
# polls, or the sweep's take_back), then the cancel orders (read and deleted), after the
# jobs (see take_all). The pushes taken are also kept under the poll's own key (KEYS[3], a
# token of the poll's) for a short while, and a take by the same poll hands them out again
# first: a take whose answer did not reach the web process (a read timeout on a busy
# machine) is not lost with it, the poll's retry gets it. A poll that got its answer never
# takes again (it returns).
_TAKE_ALL = """
local jobs = redis.call('LRANGE', KEYS[3], 0, -1)
local limit = tonumber(ARGV[2])
while #jobs < limit do
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  local pushed = redis.call('GETDEL', ARGV[1] .. id)
  if pushed then
    table.insert(jobs, pushed)
    redis.call('RPUSH', KEYS[3], pushed)
    redis.call('PEXPIRE', KEYS[3], ARGV[3])
  end
end
local cancels = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
return {jobs, cancels}
"""
# How long a poll's taken pushes wait for its retry (longer than any retry of one poll).
TAKEN_KEEP_MS = 60_000


def taken_list(poll_token: str) -> str:
    return f"iac:taken:{poll_token}"


def take_back(agent_id: int, job_id: int) -> bool:
    """Withdraw a push the agent has not taken; True when it was still there, so the agent
    never got the job and never will (GETDEL against the agent's own GETDEL: one wins)."""
    taken: list[Any] = []

    def take(client: redis.Redis) -> None:
        with client.pipeline(transaction=True) as pipe:
            pipe.getdel(pushed_key(job_id))
            pipe.lrem(pushed_list(agent_id), 0, job_id)
            taken.extend(pipe.execute())

    if not _best_effort("taking a push back", take):
        return False  # cannot tell: the heartbeats will
    return taken[0] is not None


def cancel_list(agent_id: int) -> str:
    return f"iac:cancel:agent:{agent_id}"


# A pushed cancel order only speeds up the heartbeat's, which repeats it until the job ends:
# one the agent never took is of no use after a few heartbeats.
CANCEL_KEEP_SECONDS = 60


def push_cancel(agent_id: int, order: dict) -> bool:
    """Hand a cancel order (`protocol.CancelOrder`) to the agent's claim long-poll, which
    answers it at once: terraform gets its SIGINT within a second of Cancel, not at the
    agent's next heartbeat. Best effort: the heartbeat's answer repeats the order anyway
    (the only way it arrives while Redis is down)."""
    data = json.dumps(order)

    def push(client: redis.Redis) -> None:
        with client.pipeline(transaction=True) as pipe:
            pipe.rpush(cancel_list(agent_id), data)
            pipe.expire(cancel_list(agent_id), CANCEL_KEEP_SECONDS)
            pipe.publish(agent_channel(agent_id), b"1")
            pipe.execute()

    return _best_effort("a cancel push", push)


async def take_all(client: aredis.Redis, agent_id: int, limit: int,
                   poll_token: str) -> tuple[list[dict], list[dict]]:
    """Up to `limit` jobs pushed to the agent (their payloads, opened) and the cancel orders
    pushed to it, each handed out once, in one round trip
    (a script: all or nothing). The orders are taken after the jobs: an agent starts the jobs
    of an answer before it acts on its orders, so an order for a job pushed in the same
    moment finds it. `poll_token` names the poll (one per long-poll request): the jobs it
    took in a call whose answer was lost come back in its next call.
    Raises REDIS_ERRORS: the long-poll tries again or falls back to the database, and the
    heartbeats carry the orders."""
    jobs, cancels = await client.eval(_TAKE_ALL, 3, pushed_list(agent_id), cancel_list(agent_id),
                                      taken_list(poll_token), "iac:push:job:", limit, TAKEN_KEEP_MS)
    return [job for job in map(_opened, jobs) if job is not None], [json.loads(c) for c in cancels]


def _opened(sealed: bytes) -> dict | None:
    """A pushed payload, opened; None (and a warning) for anything this platform did not seal
    within the push's lifetime: written into Redis by someone else, or left over."""
    ttl = int(settings.IAC_TARGET_CLAIM_TIMEOUT_SECONDS + PUSH_KEEP_SECONDS + TAKEN_KEEP_MS / 1000)
    try:
        return json.loads(crypto.unseal(sealed, ttl=ttl))
    except ValueError as exc:
        log.warning("a pushed job was dropped: %s", exc)
        return None


def async_client() -> aredis.Redis:
    """A client for one long-poll (its calls raise REDIS_ERRORS; the caller falls back)."""
    return aredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=REDIS_TIMEOUT,
                                 socket_timeout=REDIS_TIMEOUT,
                                 retry=AsyncRetry(ExponentialBackoff(cap=0.05, base=0.01), 1), **NO_DRIVER_INFO)
