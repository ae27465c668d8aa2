"""A proxy's drain past its timeout, and the settling of a request whose upstream call it stopped, against a real
Redis and the test upstream on a real socket: each held request is handed back or ended, never just dropped."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from proxy.drain import settle
from proxy.worker import Proxy
from tests.upstream import STATE, create_app
from tiffin.contracts import keys
from tiffin.contracts.config import Deployment
from tiffin.contracts.frames import Envelope, Frame, FrameKind
from tiffin.contracts.queue import Delivery, DeploymentQueue
from tiffin.contracts.registry import Registry

MODEL = "smollm2"
REPLY = keys.reply("interceptor-test")
DEADLINE_S = 30


@asynccontextmanager
async def _upstream() -> AsyncIterator[tuple[str, web.Application]]:
    """The test upstream (tests/upstream.py) in this process, on a free loopback port."""
    app = create_app(0, MODEL)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", app
    finally:
        await runner.cleanup()


async def _enqueue(redis: Redis, rid: str, stream: bool, delay_s: float) -> DeploymentQueue:
    queue = DeploymentQueue(redis, "d")
    await queue.ensure_group()
    await redis.xadd(REPLY, {"kind": "open"})  # the interceptor's reply stream, as it exists while it runs
    body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": rid}],
            "tiffin_test": {"key": rid, "delay_s": delay_s}}  # fmt: skip
    envelope = Envelope(rid, REPLY, "/v1/chat/completions", json.dumps(body).encode(), wait_deadline_ms=1)
    await queue.enqueue(envelope, max_waiting=10, ttl_s=60)
    return queue


async def _taken(redis: Redis, rid: str, consumer: str) -> tuple[DeploymentQueue, Delivery]:
    queue = await _enqueue(redis, rid, stream=False, delay_s=0)
    [delivery] = await queue.read(consumer, count=1, block_ms=1000)
    assert await queue.take(rid, consumer, REPLY) == "taken"
    return queue, delivery


async def _frames(redis: Redis) -> list[Frame]:
    entries: Any = await redis.xrange(REPLY)
    return [Frame.from_fields(fields) for _, fields in entries if b"rid" in fields]


async def _pending(redis: Redis) -> int:
    summary: Any = await redis.xpending(keys.queue("d"), keys.GROUP)
    return int(summary["pending"])


async def test_past_its_timeout_a_drain_hands_back_an_unstarted_request_and_ends_a_started_one(redis: Redis) -> None:
    queue = await _enqueue(redis, "r-plain", stream=False, delay_s=DEADLINE_S)
    await _enqueue(redis, "r-stream", stream=True, delay_s=DEADLINE_S)  # its head goes out, its first chunk never
    deployment = Deployment.model_validate({"name": "d", "model": MODEL})
    async with _upstream() as (url, app), aiohttp.ClientSession() as session:
        proxy = Proxy(deployment, queue, Registry(redis, "d", "api"), session, "replica-1", url)
        consumer = asyncio.create_task(proxy.consume())
        async with asyncio.timeout(DEADLINE_S):
            # Observing the request states and the upstream's arrivals: no event to await.
            while await queue.state("r-stream") != "started" or len(app[STATE]["arrivals"]) < 2:
                await asyncio.sleep(0.02)
        proxy.stopping.set()  # as on SIGTERM: read nothing more, then drain
        await consumer
        await proxy.drain(0.1)
        assert proxy.busy == 0

    # Not started: back in the queue at once (not acknowledged, not left to a heartbeat lapse), for another replica.
    assert await queue.state("r-plain") == "queued"
    [again] = await queue.read("replica-2", count=1, block_ms=1000)
    assert again.envelope.request_id == "r-plain"
    # Started: its reply ends with the error frame an interceptor relays for a failed replica, signed by its owner.
    frames = [(f.request_id, f.kind, f.by, f.error.get("code")) for f in await _frames(redis)]
    assert frames == [("r-stream", FrameKind.HEAD, "replica-1", None),
                      ("r-stream", FrameKind.ERROR, "replica-1", "replica_failed")]  # fmt: skip
    assert await queue.holds("replica-1", again.entry_id) is False
    assert await _pending(redis) == 1  # only the copy replica-2 just read


async def test_a_request_taken_once_the_drain_gave_up_goes_back_unforwarded(redis: Redis) -> None:
    queue, delivery = await _taken(redis, "r1", "replica-1")
    deployment = Deployment.model_validate({"name": "d", "model": MODEL})
    async with _upstream() as (url, app), aiohttp.ClientSession() as session:
        proxy = Proxy(deployment, queue, Registry(redis, "d", "api"), session, "replica-1", url)
        proxy._giving_up = True  # what `drain` sets past its timeout, while this request was being taken
        await proxy._handle(delivery)
        assert app[STATE]["arrivals"] == []
    assert await queue.state("r1") == "queued"
    assert await _pending(redis) == 0
    assert await _frames(redis) == []


async def test_settle_leaves_an_answered_request_alone(redis: Redis) -> None:
    queue, delivery = await _taken(redis, "r1", "replica-1")
    answer = [Frame.head("r1", "replica-1", 200, {}), Frame.end("r1", "replica-1")]
    assert await queue.answer(delivery, answer) == "started"  # the answer acknowledges the entry in the same step
    assert await settle(queue, delivery, "replica-1") == "settled"
    assert [f.kind for f in await _frames(redis)] == [FrameKind.HEAD, FrameKind.END]  # no error after the end


async def test_settle_leaves_a_request_another_replica_reclaimed_to_it(redis: Redis) -> None:
    queue, delivery = await _taken(redis, "r1", "replica-1")
    await redis.xclaim(queue.key, keys.GROUP, "replica-2", 0, [delivery.entry_id])  # replica-1 was thought dead
    assert await queue.take("r1", "replica-2", REPLY) == "taken"
    assert await settle(queue, delivery, "replica-1") == "settled"
    assert await queue.state("r1") == "taken" and await queue.owner("r1") == "replica-2"
    assert await queue.holds("replica-2", delivery.entry_id)
    assert await _frames(redis) == []


async def test_settle_acknowledges_a_cancelled_request(redis: Redis) -> None:
    queue, delivery = await _taken(redis, "r1", "replica-1")
    assert await queue.cancel("r1", delivery.entry_id, even_if_taken=True) == "cancelled"
    assert await settle(queue, delivery, "replica-1") == "acknowledged"
    assert await _pending(redis) == 0
    assert await _frames(redis) == []
