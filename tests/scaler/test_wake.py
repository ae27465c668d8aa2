"""The wake hub in-process on a real Redis: one subscription, fan-out per deployment, resync on reconnect."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from scaler.wake import WakeHub
from tiffin.common.redis_conn import connect
from tiffin.contracts import keys
from tiffin.local.redis_server import EmbeddedRedis

WAIT_S = 10.0


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[Redis]:
    """A Redis of its own: these tests kill pub/sub connections, which would disturb the session scaler."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    client = connect(server.url)
    yield client
    await client.aclose()
    server.stop()


@pytest.fixture
async def hub(own_redis: Redis) -> AsyncIterator[WakeHub]:
    wakes = WakeHub(own_redis)
    wakes.start()
    await wakes.subscribed.wait()
    yield wakes
    await wakes.close()


async def subscriber_count(redis: Redis) -> int:
    counts: list[tuple[bytes, int]] = await redis.pubsub_numsub(keys.WAKE_CHANNEL)  # type: ignore[assignment]
    return int(counts[0][1])


async def test_a_wake_reaches_every_waiter_of_its_deployment_only(own_redis: Redis, hub: WakeHub) -> None:
    with hub.waiter("alpha") as a1, hub.waiter("alpha") as a2, hub.waiter("beta") as b:
        assert await subscriber_count(own_redis) == 1  # one subscription, however many streams

        await own_redis.publish(keys.WAKE_CHANNEL, "alpha")

        assert await a1.wait(WAIT_S)
        assert await a2.wait(WAIT_S)
        assert (a1.take(), a2.take()) == (1, 1)
        assert not await b.wait(0)  # the hub handles messages in order: alpha's wake has been fanned out

        await own_redis.publish(keys.WAKE_CHANNEL, "beta")
        assert await b.wait(WAIT_S)
        assert b.take() == 1
        assert not await a1.wait(0)


async def test_waiters_leave_with_their_stream(own_redis: Redis, hub: WakeHub) -> None:
    with hub.waiter("alpha") as gone:
        pass
    with hub.waiter("alpha") as staying:
        await own_redis.publish(keys.WAKE_CHANNEL, "alpha")
        assert await staying.wait(WAIT_S)
    assert gone.take() == 0


async def test_a_lost_subscription_is_renewed_and_every_waiter_re_reads(own_redis: Redis, hub: WakeHub) -> None:
    with hub.waiter("alpha") as alpha, hub.waiter("beta") as beta:
        killed = await own_redis.client_kill_filter(_type="pubsub")
        assert killed == 1

        # Nothing was published: the nudge says "re-read Redis", not "a request arrived".
        assert await alpha.wait(WAIT_S)
        assert await beta.wait(WAIT_S)
        assert (alpha.take(), beta.take()) == (0, 0)
        await hub.subscribed.wait()
        assert await subscriber_count(own_redis) == 1

        await own_redis.publish(keys.WAKE_CHANNEL, "alpha")
        assert await alpha.wait(WAIT_S)
        assert alpha.take() == 1
