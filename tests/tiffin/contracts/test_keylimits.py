"""Per-key limits in Redis: GCRA rate with a burst, leased concurrency slots, nothing charged for a refusal."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from tiffin.contracts import keys
from tiffin.contracts.config import KeyLimits
from tiffin.contracts.exceptions import KeyConcurrencyLimited, KeyRateLimited
from tiffin.contracts.keylimits import KeyLimiter


async def test_the_rate_admits_a_burst_then_refuses_with_retry_after(redis: Redis) -> None:
    limiter = KeyLimiter(redis)
    limits = KeyLimits(requests_per_second=0.5, burst=2, concurrency=None)

    assert await limiter.acquire("k", "d", limits, "r1") is None  # no concurrency limit: no slot to hold
    await limiter.acquire("k", "d", limits, "r2")
    with pytest.raises(KeyRateLimited) as caught:
        await limiter.acquire("k", "d", limits, "r3")

    assert caught.value.status == 429 and caught.value.error_type == "rate_limit_error"
    assert 1 <= (caught.value.retry_after or 0) <= 2  # one request every 2 s
    # Another deployment, or another key, has its own bucket.
    await limiter.acquire("k", "other", limits, "r4")
    await limiter.acquire("k2", "d", limits, "r5")


async def test_a_refused_request_costs_the_key_nothing(redis: Redis) -> None:
    limiter = KeyLimiter(redis)
    limits = KeyLimits(requests_per_second=1, burst=1, concurrency=1)
    slot = await limiter.acquire("k", "d", limits, "r1")
    before = await redis.get(keys.key_rate("k", "d"))

    with pytest.raises(KeyConcurrencyLimited):
        await limiter.acquire("k", "d", limits, "r2")

    assert await redis.get(keys.key_rate("k", "d")) == before
    assert await redis.zrange(keys.key_slots("k", "d"), 0, -1) == [b"r1"]
    await limiter.release(slot)
    assert await redis.exists(keys.key_slots("k", "d")) == 0


async def test_concurrency_frees_a_slot_when_a_request_ends(redis: Redis) -> None:
    limiter = KeyLimiter(redis)
    limits = KeyLimits(requests_per_second=None, concurrency=2)
    first = await limiter.acquire("k", "d", limits, "r1")
    await limiter.acquire("k", "d", limits, "r2")

    with pytest.raises(KeyConcurrencyLimited) as caught:
        await limiter.acquire("k", "d", limits, "r3")
    assert caught.value.retry_after == 1 and "2 requests in progress" in caught.value.message

    await limiter.release(first)
    assert await limiter.acquire("k", "d", limits, "r3") is not None
    assert set(limiter.held) == {"r2", "r3"}


async def test_a_dead_interceptors_slots_lapse_with_their_lease(redis: Redis) -> None:
    # A slot whose lease ended (its interceptor died and stopped renewing) no longer counts.
    await redis.zadd(keys.key_slots("k", "d"), {"from-a-dead-interceptor": 1})
    limiter = KeyLimiter(redis)

    slot = await limiter.acquire("k", "d", KeyLimits(requests_per_second=None, concurrency=1), "r1")

    assert slot is not None
    assert await redis.zrange(keys.key_slots("k", "d"), 0, -1) == [b"r1"]


async def test_held_slots_are_renewed_while_their_requests_live(redis: Redis) -> None:
    limiter = KeyLimiter(redis, lease_s=1)
    slot = await limiter.acquire("k", "d", KeyLimits(requests_per_second=None, concurrency=1), "r1")
    assert slot is not None
    first = await redis.zscore(slot.key, "r1")
    stop = asyncio.Event()
    renewing = asyncio.create_task(limiter.renew_forever(stop))
    try:
        async with asyncio.timeout(10):
            while await redis.zscore(slot.key, "r1") == first:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await renewing
    await limiter.release(slot)
    # A released slot is never revived by a renewal that raced it (ZADD XX).
    await limiter._renew(keys=[slot.key], args=[1000, "r1"])
    assert await redis.zscore(slot.key, "r1") is None
