"""The proxy's work loop against a real Redis and real sockets, with an API server that dies under each request."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from redis.asyncio import Redis

from proxy.worker import Proxy
from tiffin.contracts import keys
from tiffin.contracts.config import Deployment
from tiffin.contracts.frames import Envelope, Frame, FrameKind
from tiffin.contracts.queue import DeploymentQueue
from tiffin.contracts.registry import Registry

REPLY = keys.reply("interceptor-test")


async def _dies_holding_it(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An API server that reads the request and dies before any reply byte (its connection just closes)."""
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def test_a_request_that_every_api_server_dies_under_is_answered_502_not_passed_on_forever(
    redis: Redis,
) -> None:
    server = await asyncio.start_server(_dies_holding_it, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    deployment = Deployment.model_validate({"name": "d", "model": "smollm2"})
    queue = DeploymentQueue(redis, "d")
    await queue.ensure_group()
    await redis.xadd(REPLY, {"kind": "open"})
    envelope = Envelope("r1", REPLY, "/v1/chat/completions", b'{"model": "smollm2"}', wait_deadline_ms=1)
    await queue.enqueue(envelope, max_waiting=10, ttl_s=60)
    outcomes = []
    try:
        async with aiohttp.ClientSession() as session:
            for n in range(1, 4):  # each time a replica whose API server dies under the request
                replica = f"replica-{n}"
                proxy = Proxy(deployment, queue, Registry(redis, "d", "api"), session, replica, url)
                [delivery] = await queue.read(replica, count=1, block_ms=1000)
                await proxy._handle(delivery)
                outcomes.append(await queue.state("r1"))
    finally:
        server.close()
        await server.wait_closed()

    # Handed back twice for another replica (no byte had gone out), then taken for the request's own doing.
    assert outcomes == ["queued", "queued", "taken"]
    entries: Any = await redis.xrange(REPLY)
    frames = [Frame.from_fields(fields) for _, fields in entries if b"rid" in fields]
    assert [(f.kind, f.status, f.error.get("code")) for f in frames] == [(FrameKind.ERROR, 502, "upstream_failed")]
    assert await redis.xlen(queue.key) == 0  # acknowledged: never delivered again
