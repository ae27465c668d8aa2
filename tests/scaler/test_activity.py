"""IsActive and StreamIsActive: activation is pushed by the enqueue's wake, not found by polling."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis

from tests.scaler.conftest import Keda, enqueue
from tiffin.contracts import keys
from tiffin.contracts.queue import DeploymentQueue, now_ms

PUSH_DEADLINE_S = 5.0
"""Far below the scaler's 30 s poll interval: only the wake can explain an answer this fast."""


async def is_active(stub: Any, keda: Keda, deployment: str, component: str = "api") -> bool:
    return bool((await stub.IsActive(keda.ref(deployment, component))).result)


async def test_is_active_is_false_at_rest_and_true_while_a_request_waits(redis: Redis, stub: Any, keda: Keda) -> None:
    assert not await is_active(stub, keda, "alpha", "api")
    assert not await is_active(stub, keda, "alpha", "runner")

    await enqueue(redis, "alpha")

    assert await is_active(stub, keda, "alpha", "api")
    assert await is_active(stub, keda, "alpha", "runner")
    assert not await is_active(stub, keda, "beta")


async def test_idle_period_keeps_a_deployment_active_after_its_queue_empties(
    redis: Redis, stub: Any, keda: Keda
) -> None:
    for name in ("alpha", "gamma"):  # idle_period_s: 0 and 3600
        queue = DeploymentQueue(redis, name)
        await queue.ensure_group()
        await enqueue(redis, name)
        [delivery] = await queue.read("c1", count=1, block_ms=100)
        await queue.finish(delivery.entry_id)
        assert await queue.depth() == (0, 0)

    assert not await is_active(stub, keda, "alpha")
    assert await is_active(stub, keda, "gamma", "api")
    assert await is_active(stub, keda, "gamma", "runner")


async def test_stream_is_active_flips_on_the_wake_long_before_the_poll(
    redis: Redis, stub: Any, keda: Keda, record_property: Any
) -> None:
    api = stub.StreamIsActive(keda.ref("alpha", "api"))
    runner = stub.StreamIsActive(keda.ref("alpha", "runner"))
    other = stub.StreamIsActive(keda.ref("beta", "api"))
    assert [(await s.read()).result for s in (api, runner, other)] == [False, False, False]
    seen_by_other: list[tuple[bool, float]] = []

    async def follow_other() -> None:
        while (reply := await other.read()) is not grpc.aio.EOF:
            seen_by_other.append((reply.result, time.monotonic()))

    follower = asyncio.create_task(follow_other())

    started = time.monotonic()
    [admission] = await enqueue(redis, "alpha")
    assert admission.cold  # no API server or runner registered: the enqueue published a wake

    async def flip(call: Any) -> float:
        reply = await asyncio.wait_for(call.read(), PUSH_DEADLINE_S)
        assert reply.result is True
        return time.monotonic() - started

    latencies = await asyncio.gather(flip(api), flip(runner))
    record_property("activation_latency_ms", [round(s * 1000, 1) for s in latencies])
    print(f"StreamIsActive flip latency: api {latencies[0] * 1000:.1f} ms, runner {latencies[1] * 1000:.1f} ms")

    # beta heard nothing from alpha's wake: its first message after `false` is the answer to its own request.
    assert await stub.GetMetricSpec(keda.ref("beta", "api"))  # one more round trip through the server
    beta_started = time.monotonic()
    await enqueue(redis, "beta")
    deadline = time.monotonic() + PUSH_DEADLINE_S
    while not seen_by_other:
        assert time.monotonic() < deadline, "beta's stream did not flip on its own wake"
        await asyncio.sleep(0.01)
    assert seen_by_other[0][0] is True
    assert seen_by_other[0][1] >= beta_started

    for call in (api, runner, other):
        call.cancel()
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower


async def test_every_wake_is_sent_as_true_even_when_already_active(redis: Redis, stub: Any, keda: Keda) -> None:
    await enqueue(redis, "alpha")
    stream = stub.StreamIsActive(keda.ref("alpha", "runner"))
    assert (await stream.read()).result is True

    await enqueue(redis, "alpha")  # still cold: another wake, another nudge for KEDA

    reply = await asyncio.wait_for(stream.read(), PUSH_DEADLINE_S)
    assert reply.result is True
    stream.cancel()


async def test_pushing_true_marks_the_activated_phase_of_the_cold_start(redis: Redis, stub: Any, keda: Keda) -> None:
    stream = stub.StreamIsActive(keda.ref("beta", "runner"))
    assert (await stream.read()).result is False
    [admission] = await enqueue(redis, "beta")
    assert admission.woke

    assert (await asyncio.wait_for(stream.read(), PUSH_DEADLINE_S)).result is True

    # Marked before the push went out, so it is there by the time KEDA (here: this test) hears it.
    phases = await redis.hgetall(keys.cold_start_phases("beta"))
    assert int(phases[b"activated"]) >= int(phases[b"arrived"]) - 1000  # Redis's clock; arrival by the enqueuer's
    stream.cancel()


async def test_pushing_true_with_no_cold_start_under_way_marks_nothing(redis: Redis, stub: Any, keda: Keda) -> None:
    await redis.set(keys.activity("gamma"), now_ms())  # active for its idle period, and no request is waking it
    stream = stub.StreamIsActive(keda.ref("gamma", "api"))
    assert (await stream.read()).result is True  # marked (or not) before it was pushed
    assert await redis.exists(keys.cold_start_phases("gamma"), keys.waking("gamma")) == 0
    stream.cancel()
