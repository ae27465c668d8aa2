"""Back-off for loops that ride out a Redis outage: growing waits up to a cap, reset once Redis answers."""

from __future__ import annotations

import asyncio

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from tiffin.common.backoff import Backoff, is_nogroup


async def test_waits_grow_to_the_cap_and_start_over_after_a_success() -> None:
    retry = Backoff("test", first_s=0.001, max_s=0.004)
    stop = asyncio.Event()
    for _ in range(5):
        await retry.failed(RedisConnectionError("down"), stop)
    assert retry.failures == 5 and retry._delay_s == 0.004
    retry.succeeded()
    assert retry.failures == 0 and retry._delay_s == 0.001


async def test_a_stop_ends_the_wait_at_once() -> None:
    retry = Backoff("test", first_s=600, max_s=600)
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(retry.failed(RedisConnectionError("down"), stop), 30)


def test_a_lost_consumer_group_is_recognised() -> None:
    assert is_nogroup(ResponseError("NOGROUP No such key 'q' or consumer group 'g' in XREADGROUP with GROUP option"))
    assert not is_nogroup(ResponseError("BUSYGROUP Consumer Group name already exists"))
    assert not is_nogroup(RedisConnectionError("NOGROUP"))
