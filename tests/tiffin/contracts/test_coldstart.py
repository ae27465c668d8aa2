"""Cold-start phases on a real Redis: marked only during the cold start they belong to, first mark winning, folded
into one bounded list of records by the request that woke the deployment."""

from __future__ import annotations

import dataclasses
import json

from redis.asyncio import Redis

from tests.tiffin.contracts.test_queue import envelope
from tiffin.contracts import keys
from tiffin.contracts.coldstart import (
    MAX_RECORDS,
    PHASES,
    ColdStart,
    end_wake,
    mark,
    recent_cold_starts,
)
from tiffin.contracts.frames import Envelope
from tiffin.contracts.queue import DeploymentQueue, now_ms
from tiffin.contracts.registry import Registry

DEP = "phases-dep"


def arriving(request_id: str) -> Envelope:
    """A request arriving now (the shared test envelope says it arrived in 1970)."""
    return dataclasses.replace(envelope(request_id), enqueued_ms=now_ms())


async def wake(redis: Redis, request_id: str, deployment: str = DEP) -> DeploymentQueue:
    """Enqueue `request_id` into a cold deployment: it starts the cold start."""
    queue = DeploymentQueue(redis, deployment)
    admission = await queue.admit(arriving(request_id), max_waiting=1000, ttl_s=60)
    assert admission.woke
    return queue


async def test_every_phase_lands_in_the_record_of_the_request_that_woke_the_deployment(redis: Redis) -> None:
    queue = await wake(redis, "waker")
    assert await mark(redis, DEP, "activated")
    assert await mark(redis, DEP, "replica_started")
    await Registry(redis, DEP, "api").register("api-1", {"url": "http://127.0.0.1:1"})
    await Registry(redis, DEP, "runner").register("runner-1", {"url": "http://127.0.0.1:2"})
    assert await queue.take("waker", "proxy-1") == "taken"

    record = await end_wake(redis, DEP, "waker", 1234.4)

    assert record is not None
    assert (record.request_id, record.outcome, record.total_ms) == ("waker", "ok", 1234.0)
    assert list(record.phases) == list(PHASES)
    assert record.phases["first_byte"] == 1234.0
    assert all(ms >= 0 for ms in record.phases.values())
    assert abs(record.at_ms - now_ms()) < 60_000  # arrival by the clock of this host and Redis alike
    assert await recent_cold_starts(redis, DEP) == [record]
    # The cold start is over: no mark, no phases; the old summary hash (status reads it) keeps its duration.
    assert await redis.exists(keys.waking(DEP), keys.cold_start_phases(DEP)) == 0
    assert int((await redis.hgetall(keys.cold_start(DEP)))[b"duration_ms"]) == 1234


async def test_phases_are_marked_only_while_a_cold_start_is_under_way(redis: Redis) -> None:
    assert not await mark(redis, DEP, "activated")
    await Registry(redis, DEP, "api").register("api-1", {"url": "http://127.0.0.1:1"})
    assert await redis.exists(keys.cold_start_phases(DEP)) == 0

    # Warm (both components ready): a request finds nothing to wake, and taking it marks nothing.
    await Registry(redis, DEP, "runner").register("runner-1", {"url": "http://127.0.0.1:2"})
    queue = DeploymentQueue(redis, DEP)
    assert not (await queue.admit(arriving("warm"), max_waiting=10, ttl_s=60)).cold
    assert await queue.take("warm", "proxy-1") == "taken"
    assert await redis.exists(keys.waking(DEP), keys.cold_start_phases(DEP)) == 0


async def test_the_first_mark_of_a_phase_wins(redis: Redis) -> None:
    await wake(redis, "waker")
    assert await mark(redis, DEP, "activated")
    first = await redis.hget(keys.cold_start_phases(DEP), "activated")
    assert not await mark(redis, DEP, "activated")  # the other component's stream, or another scaler replica
    await Registry(redis, DEP, "api").register("api-1", {"url": "http://127.0.0.1:1"})
    api_ready = await redis.hget(keys.cold_start_phases(DEP), "api_ready")
    await Registry(redis, DEP, "api").register("api-2", {"url": "http://127.0.0.1:3"})
    assert await redis.hget(keys.cold_start_phases(DEP), "activated") == first
    assert await redis.hget(keys.cold_start_phases(DEP), "api_ready") == api_ready


async def test_only_the_first_replica_ready_of_a_component_marks_its_phase(redis: Redis) -> None:
    # The runner stayed warm; only the API servers went to zero. A second runner joining is no engine start.
    await Registry(redis, DEP, "runner").register("runner-1", {"url": "http://127.0.0.1:2"})
    await wake(redis, "waker")
    await Registry(redis, DEP, "runner").register("runner-2", {"url": "http://127.0.0.1:3"})
    await Registry(redis, DEP, "api").register("api-1", {"url": "http://127.0.0.1:1"})
    record = await end_wake(redis, DEP, "waker", 500)
    assert record is not None
    assert list(record.phases) == ["api_ready", "first_byte"]


async def test_marks_for_another_request_or_a_finished_cold_start_are_ignored(redis: Redis) -> None:
    queue = await wake(redis, "waker")
    await queue.admit(arriving("follower"), max_waiting=10, ttl_s=60)
    # Only the waking request's dispatch is the cold start's: a proxy taking another request marks nothing.
    assert not await mark(redis, DEP, "dispatched", request_id="follower")
    assert await queue.take("follower", "proxy-1") == "taken"
    assert await redis.hget(keys.cold_start_phases(DEP), "dispatched") is None

    assert await end_wake(redis, DEP, "waker", 50)
    # Late: a replica of that cold start registering after it ended, or a proxy taking its request again.
    await Registry(redis, DEP, "runner").register("runner-late", {"url": "http://127.0.0.1:2"})
    assert not await mark(redis, DEP, "activated")
    assert not await mark(redis, DEP, "dispatched", request_id="waker")

    await redis.delete(keys.replicas(DEP, "runner"))  # cold again
    await wake(redis, "next")
    assert not await mark(redis, DEP, "dispatched", request_id="waker")  # a stale id, during the next cold start
    assert await mark(redis, DEP, "activated")
    record = await end_wake(redis, DEP, "next", 80)
    assert record is not None
    assert set(record.phases) == {"activated", "first_byte"}


async def test_a_new_cold_start_starts_from_empty_phases_even_if_old_ones_linger(redis: Redis) -> None:
    await wake(redis, "slow")
    assert await mark(redis, DEP, "activated")
    await redis.delete(keys.waking(DEP))  # the mark expired (the waking request's wait ran out)
    await wake(redis, "later")
    assert await redis.hget(keys.cold_start_phases(DEP), "rid") == b"later"
    assert await redis.hget(keys.cold_start_phases(DEP), "activated") is None
    # The slow request's own end changes nothing: the cold start is the later request's now.
    assert await end_wake(redis, DEP, "slow", 99_000) is None
    assert await recent_cold_starts(redis, DEP) == []


async def test_a_cold_start_that_did_not_finish_is_recorded_as_failed(redis: Redis) -> None:
    await wake(redis, "gave-up")
    assert await mark(redis, DEP, "activated")
    assert await mark(redis, DEP, "replica_started")

    record = await end_wake(redis, DEP, "gave-up")

    assert record is not None
    assert (record.outcome, record.total_ms) == ("failed", None)
    assert list(record.phases) == ["activated", "replica_started"]
    assert await recent_cold_starts(redis, DEP) == [record]
    assert await redis.exists(keys.cold_start(DEP)) == 0  # the last *finished* cold start: there is none
    await wake(redis, "retry")  # (asserts it woke) the next request may start the next cold start


async def test_the_list_keeps_only_the_newest_records(redis: Redis) -> None:
    for i in range(MAX_RECORDS + 5):
        await wake(redis, f"r{i}")
        assert await end_wake(redis, DEP, f"r{i}", i)
    assert await redis.llen(keys.cold_starts(DEP)) == MAX_RECORDS
    newest = await recent_cold_starts(redis, DEP, limit=3)
    assert [r.request_id for r in newest] == [f"r{MAX_RECORDS + 4}", f"r{MAX_RECORDS + 3}", f"r{MAX_RECORDS + 2}"]
    everything = await recent_cold_starts(redis, DEP, limit=1000)
    assert everything[-1].request_id == "r5"


async def test_an_unreadable_record_is_skipped_not_fatal(redis: Redis) -> None:
    await wake(redis, "good")
    await end_wake(redis, DEP, "good", 10)
    await redis.lpush(keys.cold_starts(DEP), b"not json")
    assert [r.request_id for r in await recent_cold_starts(redis, DEP)] == ["good"]


def test_a_record_reads_back_as_written_and_reads_well() -> None:
    record = ColdStart("rid", 1_764_538_000_000, 6200.0, {"activated": 40.0, "replica_started": 300.0,
                       "api_ready": 1100.0, "engine_ready": 5600.0, "dispatched": 5700.0,
                       "first_byte": 6200.0})  # fmt: skip
    assert ColdStart.from_json(json.loads(json.dumps(record.to_json()))) == record
    assert (
        record.header()
        == "activated=40;replica_started=300;api_ready=1100;engine_ready=5600;dispatched=5700;first_byte=6200"
    )
    assert record.describe() == (
        "cold start 6.2 s: activated +0.04 s, replica started +0.30 s, API ready +1.1 s, engine ready +5.6 s, "
        "dispatched +5.7 s, first byte +6.2 s"
    )
    failed = ColdStart("rid", 1, None, {"engine_ready": 900.0, "activated": 10.0}, "failed")
    assert failed.describe() == "cold start failed: activated +0.01 s, engine ready +0.90 s"
    assert ColdStart.from_json(failed.to_json()).phases == {"activated": 10.0, "engine_ready": 900.0}
