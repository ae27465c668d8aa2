"""Runner choice over runners registered in a real Redis: least loaded, capped per runner, suspects skipped."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from redis.asyncio import Redis

from runtime.api.balancer import Balancer
from tests.runtime import until
from tiffin.contracts.exceptions import Draining, NoRunner
from tiffin.contracts.registry import Registry


async def registry_with(redis: Redis, *runner_ids: str) -> Registry:
    registry = Registry(redis, "smol", "runner", ttl_s=60)
    for rid in runner_ids:
        await registry.register(rid, {"url": f"http://{rid}.test", "concurrency": 8})
    return registry


def soon(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


async def test_least_loaded_runner_is_chosen_and_ties_are_random(redis: Redis) -> None:
    registry = await registry_with(redis, "a", "b")
    balancer = Balancer(registry.ready, concurrency=4, rng=random.Random(7))
    first, second = await balancer.acquire(soon()), await balancer.acquire(soon())
    assert {first.runner_id, second.runner_id} == {"a", "b"}
    assert first.url == f"http://{first.runner_id}.test"
    first.release()
    first.release()  # idempotent: the count must not go below what is really in flight
    third = await balancer.acquire(soon())
    assert third.runner_id == first.runner_id  # 0 in flight there, 1 at the other
    assert (balancer.load("a"), balancer.load("b")) == (1, 1)
    third.release()
    second.release()

    chosen = set()
    for _ in range(30):
        lease = await balancer.acquire(soon())
        chosen.add(lease.runner_id)
        lease.release()
    assert chosen == {"a", "b"}  # idle runners tie: both get picked
    assert (balancer.load("a"), balancer.load("b")) == (0, 0)


async def test_a_full_runner_makes_requests_wait_and_a_freed_slot_goes_to_the_waiter(redis: Redis) -> None:
    registry = await registry_with(redis, "a")
    # Long cache and poll periods: only the release can wake the waiter within the test's timeout.
    balancer = Balancer(registry.ready, concurrency=2, cache_s=60, poll_s=60)
    held = [await balancer.acquire(soon()), await balancer.acquire(soon())]
    waiter = asyncio.create_task(balancer.acquire(soon(120)))
    await until(lambda: balancer.waiting == 1, what="the third request waits")
    assert not waiter.done()
    assert balancer.load("a") == 2

    held[0].release()
    lease = await asyncio.wait_for(waiter, 5)
    assert lease.runner_id == "a"
    assert balancer.load("a") == 2  # never above the cap
    assert balancer.waiting == 0


async def test_all_runners_busy_past_the_deadline_is_no_runner(redis: Redis) -> None:
    registry = await registry_with(redis, "a")
    balancer = Balancer(registry.ready, concurrency=1)
    await balancer.acquire(soon())
    with pytest.raises(NoRunner, match="busy"):
        await balancer.acquire(soon(0.3))


async def test_suspect_runners_are_skipped_until_their_time_is_up(redis: Redis) -> None:
    registry = await registry_with(redis, "a", "b")
    balancer = Balancer(registry.ready, concurrency=4, suspect_s=0.5)
    balancer.suspect("a")
    for _ in range(10):
        lease = await balancer.acquire(soon())
        assert lease.runner_id == "b"
        lease.release()
    await until(lambda: not balancer.is_suspect("a"), what="suspicion lapses")
    leases = [await balancer.acquire(soon()), await balancer.acquire(soon())]
    assert {lease.runner_id for lease in leases} == {"a", "b"}


async def test_a_retry_does_not_wait_when_no_other_runner_is_ready(redis: Redis) -> None:
    registry = await registry_with(redis, "a")
    balancer = Balancer(registry.ready, concurrency=4)
    started = time.monotonic()
    with pytest.raises(NoRunner):
        await balancer.acquire(soon(60), exclude={"a"}, wait_for_runners=False)
    assert time.monotonic() - started < 30  # failed at once rather than at the deadline
    assert balancer.waiting == 0


async def test_without_runners_requests_wait_for_one_until_the_deadline(redis: Redis) -> None:
    registry = await registry_with(redis)
    balancer = Balancer(registry.ready, concurrency=4)
    with pytest.raises(NoRunner, match="within the wait deadline"):
        await balancer.acquire(soon(0.3))

    waiter = asyncio.create_task(balancer.acquire(soon(60)))
    await until(lambda: balancer.waiting == 1, what="the request waits")
    await registry.register("late", {"url": "http://late.test"})
    lease = await asyncio.wait_for(waiter, 10)
    assert lease.runner_id == "late"


async def test_drain_answers_waiting_and_new_requests_at_once(redis: Redis) -> None:
    registry = await registry_with(redis)
    balancer = Balancer(registry.ready, concurrency=4, poll_s=60)
    waiter = asyncio.create_task(balancer.acquire(soon(120)))
    await until(lambda: balancer.waiting == 1, what="the request waits")
    balancer.drain()
    with pytest.raises(Draining):
        await asyncio.wait_for(waiter, 5)
    await registry.register("a", {"url": "http://a.test"})
    with pytest.raises(Draining):
        await balancer.acquire(soon())


async def test_every_change_of_the_numbers_sets_load_changed(redis: Redis) -> None:
    registry = await registry_with(redis, "a")
    balancer = Balancer(registry.ready, concurrency=1, poll_s=60, cache_s=60)
    assert (balancer.waiting, balancer.in_flight()) == (0, {})
    lease = await balancer.acquire(soon())
    assert balancer.load_changed.is_set()
    assert balancer.in_flight() == {"a": 1}

    balancer.load_changed.clear()
    waiter = asyncio.create_task(balancer.acquire(soon(120)))
    await until(lambda: balancer.waiting == 1, what="the second request waits")
    assert balancer.load_changed.is_set()

    balancer.load_changed.clear()
    lease.release()
    second = await asyncio.wait_for(waiter, 5)
    assert balancer.load_changed.is_set()
    assert (balancer.waiting, balancer.in_flight()) == (0, {"a": 1})
    snapshot = balancer.in_flight()
    second.release()
    assert balancer.in_flight() == {} and snapshot == {"a": 1}  # a copy, not a view
