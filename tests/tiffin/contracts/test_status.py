"""The cold-start mark on a real Redis: one request starts a cold start, and only that request ends it."""

from __future__ import annotations

from redis.asyncio import Redis

from tests.tiffin.contracts.test_queue import envelope
from tiffin.contracts import keys
from tiffin.contracts.coldstart import end_wake
from tiffin.contracts.config import Deployment
from tiffin.contracts.queue import DeploymentQueue
from tiffin.contracts.status import read_statuses

DEP = "wake-dep"


async def test_the_first_cold_request_holds_the_waking_mark_and_the_next_does_not(redis: Redis) -> None:
    queue = DeploymentQueue(redis, DEP)
    first = await queue.admit(envelope("req-1"), max_waiting=10, ttl_s=60)
    second = await queue.admit(envelope("req-2"), max_waiting=10, ttl_s=60)
    assert (first.cold, first.woke) == (True, True)
    assert (second.cold, second.woke) == (True, False)
    assert await redis.get(keys.waking(DEP)) == b"req-1"


async def test_ending_a_wake_records_its_duration_and_frees_the_mark(redis: Redis) -> None:
    await DeploymentQueue(redis, DEP).admit(envelope("req-1"), max_waiting=10, ttl_s=60)
    assert await end_wake(redis, DEP, "req-1", 1234.4)
    assert int((await redis.hgetall(keys.cold_start(DEP)))[b"duration_ms"]) == 1234
    assert await redis.exists(keys.waking(DEP)) == 0
    again = await DeploymentQueue(redis, DEP).admit(envelope("req-3"), max_waiting=10, ttl_s=60)
    assert again.woke


async def test_a_request_whose_mark_lapsed_leaves_a_later_cold_start_alone(redis: Redis) -> None:
    queue = DeploymentQueue(redis, DEP)
    await queue.admit(envelope("slow"), max_waiting=10, ttl_s=60, wake_ttl_s=0.001)
    await redis.delete(keys.waking(DEP))  # what the mark's expiry does, without waiting for it
    later = await queue.admit(envelope("later"), max_waiting=10, ttl_s=60)
    assert later.woke

    # The slow request finally gets its head (or gives up): neither may end the later request's cold start.
    assert not await end_wake(redis, DEP, "slow", 99_000)
    assert not await end_wake(redis, DEP, "slow")
    assert await redis.get(keys.waking(DEP)) == b"later"
    assert await redis.exists(keys.cold_start(DEP)) == 0


async def test_the_oldest_waiting_request_is_the_first_no_proxy_holds(redis: Redis) -> None:
    dep = Deployment.model_validate({"name": DEP, "model": "smollm2"})
    queue = DeploymentQueue(redis, DEP)
    await redis.xadd(keys.queue(DEP), {"rid": "ancient"}, id="1-1")  # enqueued at epoch-ms 1: decades old
    (status,) = await read_statuses(redis, [dep])  # no proxy yet, so no consumer group: everything waits
    assert (status.queued, status.in_flight, status.state) == (1, 0, "waking")
    assert status.oldest_waiting_s is not None and status.oldest_waiting_s > 10 * 365 * 86400

    await queue.ensure_group()
    await queue.admit(envelope("recent"), max_waiting=10, ttl_s=60)
    await redis.xreadgroup(keys.GROUP, "proxy-1", {keys.queue(DEP): ">"}, count=1)  # a proxy holds the ancient one
    (status,) = await read_statuses(redis, [dep])
    assert (status.queued, status.in_flight) == (1, 1)
    assert status.oldest_waiting_s is not None and status.oldest_waiting_s < 600  # the recent one's age

    await redis.xreadgroup(keys.GROUP, "proxy-1", {keys.queue(DEP): ">"}, count=1)
    (status,) = await read_statuses(redis, [dep])
    assert (status.queued, status.in_flight, status.oldest_waiting_s) == (0, 2, None)


async def test_runners_asleep_read_as_sleeping_until_a_request_waits(redis: Redis) -> None:
    dep = Deployment.model_validate({"name": "sleepy", "model": "smollm2"})
    await redis.hset(keys.desired("sleepy"), mapping={"runner": 1})  # asleep runners stay wanted, deregistered
    (status,) = await read_statuses(redis, [dep])
    assert status.state == "waking"  # wanted but not ready, and no sleep mark: a start under way
    await redis.set(keys.sleep("sleepy"), "1")  # what the scaling writer sets when the runners go to sleep
    (status,) = await read_statuses(redis, [dep])
    assert status.state == "sleeping"
    queue = DeploymentQueue(redis, "sleepy")
    await queue.ensure_group()
    await queue.admit(envelope("wake-up"), max_waiting=10, ttl_s=60)
    (status,) = await read_statuses(redis, [dep])
    assert status.state == "waking"  # a request waits: it wakes them
