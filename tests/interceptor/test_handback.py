"""A request a proxy hands back unserved (its API server turned it away) waits on, under its wait deadline."""

from __future__ import annotations

import asyncio

import aiohttp
from redis.asyncio import Redis

from tests.interceptor.conftest import StandInProxy, deployment, running_edge
from tiffin.contracts.queue import DeploymentQueue

CHAT = "/v1/chat/completions"
BODY = {"model": "handed", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_handed_back_request_is_answered_by_the_next_proxy(redis: Redis) -> None:
    first, second = StandInProxy(redis, "handed", "proxy-a"), StandInProxy(redis, "handed", "proxy-b")
    async with running_edge(redis, [deployment("handed")]) as edge, aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.post(edge.url + CHAT, json=BODY))
        delivery = await first.take_one()
        assert await first.queue.release(delivery, "proxy-a") is not None
        again = await second.take_one()
        assert again.envelope.request_id == delivery.envelope.request_id
        await second.answer(again, body=b'{"answered": "by b"}')
        async with await request as resp:
            assert resp.status == 200
            assert await resp.json() == {"answered": "by b"}


async def test_a_handed_back_request_nobody_takes_is_withdrawn_at_its_wait_deadline(redis: Redis) -> None:
    proxy = StandInProxy(redis, "handed")
    queue = DeploymentQueue(redis, "handed")
    edge_deployment = deployment("handed", wait_timeout_s=1)
    async with running_edge(redis, [edge_deployment]) as edge, aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.post(edge.url + CHAT, json=BODY))
        delivery = await proxy.take_one()
        await queue.release(delivery, "proxy-test")  # queued again, under a new entry id
        async with await request as resp:
            assert resp.status == 504
            assert (await resp.json())["error"]["code"] == "wait_timeout"
    # Withdrawn under its new entry id: nothing is left for a proxy to serve to nobody.
    assert await redis.xlen(queue.key) == 0
    assert await queue.depth() == (0, 0)
