"""The replica registry on a real Redis: entries live only while they heartbeat."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from tiffin.contracts import keys
from tiffin.contracts.queue import now_ms
from tiffin.contracts.registry import Registry

INFO = {"url": "http://127.0.0.1:9000", "concurrency": 8}
SET = keys.replicas("llama", "runner")
INFO_HASH = keys.replica_info("llama", "runner")


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    """Poll an observable condition until it holds (bounded)."""
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.01)


async def lapsed(registry: Registry, replica_id: str) -> bool:
    return not await registry.is_alive(replica_id)


async def test_registered_replica_is_ready_and_alive(redis: Redis) -> None:
    registry = Registry(redis, "llama", "runner")

    await registry.register("r1", INFO)

    assert await registry.ready() == {"r1": INFO}
    assert await registry.is_alive("r1")
    score = await redis.zscore(SET, "r1")
    assert score is not None
    assert 9_000 < score - now_ms() <= 10_000  # lapses one TTL (default 10 s) from now


async def test_ready_lists_every_live_replica_with_its_info(redis: Redis) -> None:
    registry = Registry(redis, "llama", "api")
    await registry.register("a", {"url": "http://a"})
    await registry.register("b", {"url": "http://b"})

    assert await registry.ready() == {"a": {"url": "http://a"}, "b": {"url": "http://b"}}


async def test_registries_of_other_components_and_deployments_are_separate(redis: Redis) -> None:
    await Registry(redis, "llama", "runner").register("r1", INFO)

    assert await Registry(redis, "llama", "api").ready() == {}
    assert await Registry(redis, "other", "runner").ready() == {}
    assert not await Registry(redis, "llama", "api").is_alive("r1")


async def test_deregistered_replica_is_gone(redis: Redis) -> None:
    registry = Registry(redis, "llama", "runner")
    await registry.register("r1", INFO)
    await registry.register("r2", INFO)

    await registry.deregister("r1")

    assert await registry.ready() == {"r2": INFO}
    assert not await registry.is_alive("r1")
    assert await redis.hget(INFO_HASH, "r1") is None


async def test_unknown_replica_is_not_alive(redis: Redis) -> None:
    assert not await Registry(redis, "llama", "runner").is_alive("nobody")


async def test_replica_that_stops_heartbeating_lapses_and_ready_sweeps_it(redis: Redis) -> None:
    short = Registry(redis, "llama", "runner", ttl_s=0.3)
    steady = Registry(redis, "llama", "runner", ttl_s=60)
    await short.register("short-lived", {"url": "http://short"})
    await steady.register("steady", {"url": "http://steady"})
    assert set(await steady.ready()) == {"short-lived", "steady"}

    await eventually(lambda: lapsed(short, "short-lived"))

    assert await steady.ready() == {"steady": {"url": "http://steady"}}
    assert await redis.zrange(SET, 0, -1) == [b"steady"]
    assert await redis.hkeys(INFO_HASH) == [b"steady"]


async def test_heartbeat_pushes_the_lapse_time_forward(redis: Redis) -> None:
    registry = Registry(redis, "llama", "runner", ttl_s=60)
    await redis.zadd(SET, {"r1": now_ms() + 1_000})
    await redis.hset(INFO_HASH, "r1", '{"url": "x"}')

    await registry.heartbeat("r1")

    score = await redis.zscore(SET, "r1")
    assert score is not None
    assert score > now_ms() + 50_000


async def test_heartbeat_does_not_resurrect_a_deregistered_replica(redis: Redis) -> None:
    registry = Registry(redis, "llama", "runner")
    await registry.register("r1", INFO)
    await registry.deregister("r1")

    await registry.heartbeat("r1")

    assert not await registry.is_alive("r1")
    assert await redis.zscore(SET, "r1") is None
    assert await registry.ready() == {}


async def test_heartbeat_does_not_resurrect_a_lapsed_and_swept_replica(redis: Redis) -> None:
    registry = Registry(redis, "llama", "runner", ttl_s=0.3)
    await registry.register("r1", INFO)
    await eventually(lambda: lapsed(registry, "r1"))
    assert await registry.ready() == {}  # swept

    await registry.heartbeat("r1")

    assert await redis.zscore(SET, "r1") is None
    assert await registry.ready() == {}


async def test_keep_registers_at_once_stays_alive_past_its_ttl_and_deregisters_on_exit(redis: Redis) -> None:
    registry = Registry(redis, "llama", "runner", ttl_s=0.5)

    async with registry.keep("r1", INFO):
        assert await registry.ready() == {"r1": INFO}
        first_lapse = await redis.zscore(SET, "r1")
        assert first_lapse is not None
        # Watch it for longer than two TTLs: it must be alive at every look.
        async with asyncio.timeout(10):
            while now_ms() < first_lapse + registry.ttl_ms:
                assert await registry.is_alive("r1")
                await asyncio.sleep(0.02)
        assert await registry.ready() == {"r1": INFO}
        latest = await redis.zscore(SET, "r1")
        assert latest is not None and latest > first_lapse

    assert not await registry.is_alive("r1")
    assert await registry.ready() == {}
    assert await redis.hget(INFO_HASH, "r1") is None
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "heartbeat-r1"]


async def test_keep_deregisters_when_the_body_raises(redis: Redis) -> None:
    registry = Registry(redis, "llama", "runner", ttl_s=0.5)

    with pytest.raises(RuntimeError, match="replica crashed"):
        async with registry.keep("r1", INFO):
            assert await registry.is_alive("r1")
            raise RuntimeError("replica crashed")

    assert not await registry.is_alive("r1")
    assert await registry.ready() == {}


async def test_keep_registers_again_after_its_entry_was_swept_during_a_stall(redis: Redis) -> None:
    registry = Registry(redis, "llama", "runner", ttl_s=0.5)
    async with registry.keep("r1", INFO):
        await registry.deregister("r1")  # what a sweep does to an entry that lapsed while this replica stalled
        assert await registry.ready() == {}

        await eventually(lambda: registry.is_alive("r1"))

        assert await registry.ready() == {"r1": INFO}


async def test_keep_exits_promptly_and_leaves_no_heartbeat_behind_even_mid_heartbeat(redis: Redis) -> None:
    # A heartbeat every millisecond, so leaving `keep` often lands while one is being sent.
    registry = Registry(redis, "llama", "runner", ttl_s=0.003)
    for i in range(100):
        replica = f"r{i}"

        async def serve(replica: str = replica, stay_s: float = 0.0005 * (i % 7)) -> None:
            async with registry.keep(replica, INFO):
                # Not synchronisation: a varying stay, so exits fall at every point of the heartbeat cycle.
                await asyncio.sleep(stay_s)

        serving = asyncio.create_task(serve())
        await asyncio.wait({serving}, timeout=2)

        assert serving.done(), f"round {i}: leaving keep() did not return"
        assert not [t for t in asyncio.all_tasks() if t.get_name() == f"heartbeat-{replica}"], f"round {i}"
        assert await redis.zscore(SET, replica) is None, f"round {i}: re-registered after exit"
