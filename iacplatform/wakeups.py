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


def pushed_key(agent_id: int) -> str:
    return f"iac:push:agent:{agent_id}"


def push_job(agent_id: int, payload: dict) -> None:
    """Hand an assigned job to the agent's long-poll: the payload waits in a key (so an agent
    between two polls finds it at the start of the next) and a message wakes the poll.
    The key lives only as long as the agent has to acknowledge the job; after that the job
    goes back to the pool with a new fence, and a late copy would be refused anyway."""
    ttl_ms = int(settings.IAC_TARGET_CLAIM_TIMEOUT_SECONDS * 1000)
    with _client().pipeline(transaction=True) as pipe:
        pipe.set(pushed_key(agent_id), json.dumps(payload), px=ttl_ms)
        pipe.publish(agent_channel(agent_id), b"1")
        pipe.execute()


async def take_pushed(client: aredis.Redis, agent_id: int) -> dict | None:
    """GETDEL: each pushed job is handed out once, whatever races between polls."""
    raw = await client.getdel(pushed_key(agent_id))
    return json.loads(raw) if raw else None


def async_client() -> aredis.Redis:
    return aredis.Redis.from_url(settings.REDIS_URL)
