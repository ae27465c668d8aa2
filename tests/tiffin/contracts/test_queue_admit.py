"""The enqueue script is idempotent per request id: an admit whose reply was lost (a timeout) and that is sent
again, by redis-py's retry or anyone else, never queues the request twice. And one that Redis runs only after
its caller stopped waiting (a paused Redis) queues nothing."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from tests.tiffin.contracts.test_queue import TTL_S, envelope
from tiffin.contracts import keys
from tiffin.contracts.exceptions import BackendUnavailable
from tiffin.contracts.frames import Envelope
from tiffin.contracts.queue import DeploymentQueue, redis_clock_offset_ms


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


async def test_an_admit_redis_runs_after_its_caller_gave_up_queues_nothing(redis: Redis) -> None:
    queue = DeploymentQueue(redis, "m")
    await queue.ensure_group()
    # As if Redis had been paused past the caller's wait: by its clock the script runs after "accept until".
    with pytest.raises(BackendUnavailable):
        await queue.admit(envelope("late"), max_waiting=10, ttl_s=TTL_S, accept_within_s=-1.0)
    assert await redis.xlen(queue.key) == 0
    assert await redis.exists(keys.request("late")) == 0

    in_time = await queue.admit(envelope("r2"), max_waiting=10, ttl_s=TTL_S, accept_within_s=5.0)
    entries: Any = await redis.xrange(queue.key)
    assert [eid for eid, _ in entries] == [in_time.entry_id]
    assert Envelope.from_fields(entries[0][1]) == envelope("r2")  # the fields still start where they should


async def test_the_deadline_is_set_in_redis_time_by_the_measured_clock_offset(redis: Redis) -> None:
    """Redis judges "accept until" by its own clock, so the caller adds how far that clock is ahead of its own:
    two hosts whose clocks differ by more than the wait do not refuse (or accept) everything."""
    queue = DeploymentQueue(redis, "m")
    await queue.ensure_group()
    offset = await redis_clock_offset_ms(redis)
    assert abs(offset) < 1000  # one machine: one clock, within a round trip

    # Believing Redis 10 s ahead moves the deadline 10 s later in Redis's time: in time though 1 s "late" here.
    later = await queue.admit(envelope("r3"), max_waiting=10, ttl_s=TTL_S, accept_within_s=-1.0,
                              redis_clock_offset_ms=offset + 10_000)  # fmt: skip
    assert later.entry_id
    # Believing it 10 s behind moves it 10 s earlier: too late though 5 s remain here.
    with pytest.raises(BackendUnavailable):
        await queue.admit(envelope("r4"), max_waiting=10, ttl_s=TTL_S, accept_within_s=5.0,
                          redis_clock_offset_ms=offset - 10_000)  # fmt: skip
