"""A chunk frame written twice (a retried XADD whose first try ran after all) reaches the client once."""

from __future__ import annotations

import asyncio

import aiohttp
from redis.asyncio import Redis

from tests.interceptor.conftest import TIMEOUT_S, StandInProxy, deployment, running_edge
from tiffin.contracts.frames import Frame


async def _stream(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    body = {"model": "smollm2", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        return resp.status, await resp.text()


async def test_a_chunk_written_twice_is_relayed_once(redis: Redis) -> None:
    proxy = StandInProxy(redis, "smollm2")
    async with running_edge(redis, [deployment("smollm2")]) as edge, aiohttp.ClientSession() as session:
        client = asyncio.create_task(_stream(session, edge.url))
        delivery = await proxy.take_one()
        envelope = delivery.envelope
        rid, to = envelope.request_id, envelope.reply_to
        await proxy.queue.start(envelope, Frame.head(rid, proxy.name, 200, {"content-type": "text/event-stream"}))
        for seq, data in [(1, b"data: one\n\n"), (1, b"data: one\n\n"), (2, b"data: two\n\n"),
                          (1, b"data: one\n\n"), (2, b"data: two\n\n"), (3, b"data: [DONE]\n\n")]:  # fmt: skip
            await proxy.queue.send(to, Frame.chunk(rid, proxy.name, data, seq))
        await proxy.queue.send(to, Frame.end(rid, proxy.name))
        await proxy.queue.finish(delivery.entry_id)
        async with asyncio.timeout(TIMEOUT_S):
            status, text = await client
    assert status == 200
    assert text == "data: one\n\ndata: two\n\ndata: [DONE]\n\n"
