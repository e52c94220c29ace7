"""Wake-ups through Redis pub/sub: "a job is waiting for agent X / for pool P".

The claim long-poll subscribes to its agent's and its pool's channels, then tries to claim,
then waits for a message: subscribing first means a wake-up published between the claim
attempt and the wait is never lost. No polling interval sits on the Confirm -> apply path.
"""

from __future__ import annotations

import functools

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


def async_client() -> aredis.Redis:
    return aredis.Redis.from_url(settings.REDIS_URL)
