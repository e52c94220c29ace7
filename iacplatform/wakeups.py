"""Wake-ups through Redis pub/sub: "a job is waiting for agent X / for pool P".

The claim long-poll subscribes to its agent's and its pool's channels, then tries to claim,
then waits for a message: subscribing first means a wake-up published between the claim
attempt and the wait is never lost. No polling interval sits on the Confirm -> apply path.
"""

from __future__ import annotations

import functools
import json

import redis
import redis.asyncio as aredis
from django.conf import settings


def agent_channel(agent_id: int) -> str:
    return f"iac:wake:agent:{agent_id}"


def pool_channel(pool_id: int) -> str:
    return f"iac:wake:pool:{pool_id}"


@functools.cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def wake_agent(agent_id: int) -> None:
    _client().publish(agent_channel(agent_id), b"1")


def wake_pool(pool_id: int) -> None:
    _client().publish(pool_channel(pool_id), b"1")


def publish(channel: str, message: str | bytes) -> None:
    _client().publish(channel, message)


def pushed_list(agent_id: int) -> str:
    return f"iac:push:agent:{agent_id}"


def pushed_key(job_id: int) -> str:
    return f"iac:push:job:{job_id}"


PUSH_KEEP_SECONDS = 120


def push_job(agent_id: int, job_id: int, payload: dict) -> None:
    """Hand an assigned job to the agent's long-poll. Keyed by job: the payload waits in its
    own key, and the agent's list holds the ids, so two applies confirmed a moment apart
    for runs warm on the same agent are both delivered (a single key per agent would let
    the second overwrite the first, which would then go cold)."""
    # The key outlives the ack timeout: the sweep takes an untaken push back (take_back) to
    # know for sure that the agent never got it; the TTL only collects what nobody took.
    ttl_ms = int((settings.IAC_TARGET_CLAIM_TIMEOUT_SECONDS + PUSH_KEEP_SECONDS) * 1000)
    with _client().pipeline(transaction=True) as pipe:
        pipe.set(pushed_key(job_id), json.dumps(payload), px=ttl_ms)
        pipe.rpush(pushed_list(agent_id), job_id)
        pipe.pexpire(pushed_list(agent_id), ttl_ms)
        pipe.publish(agent_channel(agent_id), b"1")
        pipe.execute()


# Pop job ids until one whose payload is still there (an expired one was re-queued): one
# round trip, and GETDEL hands each payload out once whatever races between polls.
_TAKE = """
while true do
  local id = redis.call('LPOP', KEYS[1])
  if not id then return false end
  local payload = redis.call('GETDEL', ARGV[1] .. id)
  if payload then return payload end
end
"""


def take_back(agent_id: int, job_id: int) -> bool:
    """Withdraw a push the agent has not taken; True when it was still there, so the agent
    never got the job and never will (GETDEL against the agent's own GETDEL: one wins)."""
    try:
        with _client().pipeline(transaction=True) as pipe:
            pipe.getdel(pushed_key(job_id))
            pipe.lrem(pushed_list(agent_id), 0, job_id)
            payload, _ = pipe.execute()
    except redis.RedisError:
        return False  # cannot tell: the heartbeats will
    return payload is not None


async def take_pushed(client: aredis.Redis, agent_id: int) -> dict | None:
    raw = await client.eval(_TAKE, 1, pushed_list(agent_id), "iac:push:job:")
    return json.loads(raw) if raw else None


def async_client() -> aredis.Redis:
    return aredis.Redis.from_url(settings.REDIS_URL)
