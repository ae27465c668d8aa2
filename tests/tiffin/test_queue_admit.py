"""The enqueue script is idempotent per request id: an admit whose reply was lost (a timeout) and that is sent
again, by redis-py's retry or anyone else, never queues the request twice."""

from __future__ import annotations

from redis.asyncio import Redis

from tests.tiffin.test_queue import TTL_S, envelope
from tiffin import keys
from tiffin.queue import DeploymentQueue


async def test_admitting_the_same_request_twice_queues_it_once(redis: Redis) -> None:
    queue = DeploymentQueue(redis, "m")
    await queue.ensure_group()
    first = await queue.admit(envelope("r1"), max_waiting=10, ttl_s=TTL_S)
    again = await queue.admit(envelope("r1"), max_waiting=10, ttl_s=TTL_S)

    assert again.entry_id == first.entry_id
    assert await redis.xlen(queue.key) == 1
    assert await redis.hget(keys.request("r1"), "state") == b"queued"


async def test_a_repeated_admit_is_not_refused_by_the_bound_it_already_counts_in(redis: Redis) -> None:
    queue = DeploymentQueue(redis, "m")
    await queue.ensure_group()
    first = await queue.admit(envelope("r1"), max_waiting=1, ttl_s=TTL_S)
    assert (await queue.admit(envelope("r1"), max_waiting=1, ttl_s=TTL_S)).entry_id == first.entry_id
    assert await redis.xlen(queue.key) == 1
