"""The interceptor's Redis client: a pool much smaller than a burst makes requests wait their turn, never fail;
its two settings have documented defaults and clear errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from redis.asyncio import Redis

from interceptor.config import EdgeSettings, InterceptorSettings
from tests.interceptor.conftest import TIMEOUT_S, StandInProxy, deployment, running_edge
from tiffin.common.redis_conn import connect_bounded
from tiffin.local.redis_server import EmbeddedRedis

CHAT = "/v1/chat/completions"
BURST = 200
POOL = 4


@pytest.fixture
async def small_pool(redis_server: EmbeddedRedis, redis: Redis) -> AsyncIterator[Redis]:
    """The interceptor's kind of client on the shared (emptied) Redis, with only `POOL` connections (its reply
    reader holds one of them in each blocked read, too)."""
    client = connect_bounded(redis_server.url, max_connections=POOL, timeout_s=TIMEOUT_S)
    yield client
    await client.aclose()


async def test_a_burst_fifty_times_the_pool_waits_for_connections_and_is_answered(
    redis: Redis, small_pool: Redis
) -> None:
    edge_settings = EdgeSettings(max_connections_per_client=4 * BURST, redis_timeout_s=TIMEOUT_S)
    async with running_edge(small_pool, [deployment("smollm2", max_queue=2 * BURST)], edge=edge_settings) as edge:
        proxy = StandInProxy(redis, "smollm2")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def one(i: int) -> tuple[int, bytes]:
                body = {"model": "smollm2", "messages": [{"role": "user", "content": f"n{i}"}]}
                async with session.post(edge.url + CHAT, json=body) as resp:
                    return resp.status, await resp.read()

            posting = [asyncio.create_task(one(i)) for i in range(BURST)]
            async with asyncio.timeout(TIMEOUT_S * 6):
                for _ in range(BURST):  # answer each with its own text, as they come
                    delivery = await proxy.take_one()
                    text = json.loads(delivery.envelope.body)["messages"][0]["content"]
                    await proxy.answer(delivery, body=json.dumps({"echo": text}).encode())
                answers = await asyncio.gather(*posting)
    assert [status for status, _ in answers] == [200] * BURST
    assert [json.loads(body)["echo"] for _, body in answers] == [f"n{i}" for i in range(BURST)]


def test_redis_settings_have_documented_defaults_and_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIFFIN_CONFIG", "/nonexistent.yaml")
    monkeypatch.setenv("TIFFIN_PLAIN_HTTP", "1")
    for name in ("TIFFIN_REDIS_MAX_CONNECTIONS", "TIFFIN_REDIS_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    defaults = InterceptorSettings.from_env()
    assert (defaults.redis_max_connections, defaults.edge.redis_timeout_s) == (64, 5.0)

    monkeypatch.setenv("TIFFIN_REDIS_MAX_CONNECTIONS", "16")
    monkeypatch.setenv("TIFFIN_REDIS_TIMEOUT_S", "2.5")
    settings = InterceptorSettings.from_env()
    assert (settings.redis_max_connections, settings.edge.redis_timeout_s) == (16, 2.5)


@pytest.mark.parametrize(("name", "value"), [("TIFFIN_REDIS_MAX_CONNECTIONS", "2"), ("TIFFIN_REDIS_TIMEOUT_S", "0")])
def test_a_bad_redis_setting_stops_the_start_with_its_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv("TIFFIN_CONFIG", "/nonexistent.yaml")
    monkeypatch.setenv("TIFFIN_PLAIN_HTTP", "1")
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=name):
        InterceptorSettings.from_env()
