"""Cold starts seen from the edge: the wait header, the histogram, and the one recorded cold start per wake."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from redis.asyncio import Redis

from interceptor import metrics
from tests.interceptor.conftest import StandInProxy, deployment, eventually, running_edge
from tiffin.contracts import keys
from tiffin.contracts.coldstart import recent_cold_starts
from tiffin.contracts.frames import COLD_START_HEADER, COLD_START_PHASES_HEADER
from tiffin.contracts.queue import DeploymentQueue
from tiffin.contracts.registry import Registry

CHAT = "/v1/chat/completions"


def body(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


def cold_starts_observed(name: str) -> float:
    return metrics.REGISTRY.get_sample_value("tiffin_cold_start_wait_seconds_count", {"deployment": name}) or 0.0


def cold_starts_ended(name: str, outcome: str) -> float:
    labels = {"deployment": name, "outcome": outcome}
    return metrics.REGISTRY.get_sample_value("tiffin_cold_starts_total", labels) or 0.0


async def make_warm(redis: Redis, name: str) -> None:
    for component in keys.COMPONENTS:
        await Registry(redis, name, component).register(f"{name}-{component}-1", {"url": "http://127.0.0.1:1"})


async def test_cold_request_reports_its_wait_and_records_the_cold_start(redis: Redis) -> None:
    proxy = StandInProxy(redis, "cold-a")
    async with running_edge(redis, [deployment("cold-a")]) as edge, aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.post(edge.url + CHAT, json=body("cold-a")))
        delivery = await proxy.take_one()
        assert await redis.exists(keys.waking("cold-a")) == 1
        await proxy.answer(delivery)
        async with await request as resp:
            assert resp.status == 200
            waited_ms = int(resp.headers[COLD_START_HEADER])
            phases = resp.headers[COLD_START_PHASES_HEADER]
            assert await resp.json() == {"ok": True}
    assert waited_ms >= 0
    recorded = await redis.hgetall(keys.cold_start("cold-a"))
    assert int(recorded[b"duration_ms"]) == waited_ms
    assert await redis.exists(keys.waking("cold-a")) == 0
    assert cold_starts_observed("cold-a") == 1.0
    # No scaler or registry here: the proxy's take and the reply's head are the phases seen.
    [record] = await recent_cold_starts(redis, "cold-a")
    assert list(record.phases) == ["dispatched", "first_byte"] and record.total_ms == waited_ms
    assert phases == record.header() and phases.endswith(f";first_byte={waited_ms}")
    assert cold_starts_ended("cold-a", "ok") == 1.0
    count = metrics.REGISTRY.get_sample_value("tiffin_cold_start_phase_seconds_count",
                                              {"deployment": "cold-a", "phase": "dispatched"})  # fmt: skip
    assert count == 1.0


async def test_warm_request_gets_no_cold_start_header(redis: Redis) -> None:
    proxy = StandInProxy(redis, "warm-a")
    await make_warm(redis, "warm-a")
    async with running_edge(redis, [deployment("warm-a")]) as edge, aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.post(edge.url + CHAT, json=body("warm-a")))
        await proxy.answer(await proxy.take_one())
        async with await request as resp:
            assert resp.status == 200
            assert COLD_START_HEADER not in resp.headers and COLD_START_PHASES_HEADER not in resp.headers
    assert await redis.exists(keys.waking("warm-a"), keys.cold_start("warm-a"), keys.cold_starts("warm-a")) == 0
    assert cold_starts_observed("warm-a") == 0.0


async def test_only_the_request_that_woke_the_deployment_records_the_cold_start(redis: Redis) -> None:
    proxy = StandInProxy(redis, "cold-b")
    async with running_edge(redis, [deployment("cold-b")]) as edge, aiohttp.ClientSession() as session:
        first = asyncio.create_task(session.post(edge.url + CHAT, json=body("cold-b")))
        first_delivery = await proxy.take_one()
        second = asyncio.create_task(session.post(edge.url + CHAT, json=body("cold-b")))
        second_delivery = await proxy.take_one()

        # The second request waited for the same cold start: it is told so, but it did not start it.
        await proxy.answer(second_delivery)
        async with await second as resp:
            assert resp.status == 200
            assert int(resp.headers[COLD_START_HEADER]) >= 0
            assert COLD_START_PHASES_HEADER not in resp.headers  # the phases are the waking request's to tell
        assert await redis.exists(keys.cold_start("cold-b")) == 0
        assert await redis.exists(keys.waking("cold-b")) == 1

        await proxy.answer(first_delivery)
        async with await first as resp:
            assert resp.status == 200
            first_ms = int(resp.headers[COLD_START_HEADER])
    assert int((await redis.hgetall(keys.cold_start("cold-b")))[b"duration_ms"]) == first_ms
    assert await redis.exists(keys.waking("cold-b")) == 0
    assert cold_starts_observed("cold-b") == 2.0


@pytest.mark.parametrize("ending", ["client_gone", "error_frame"])
async def test_a_waking_request_that_never_gets_a_head_clears_the_waking_mark(redis: Redis, ending: str) -> None:
    name = f"cold-{ending.replace('_', '-')}"
    proxy = StandInProxy(redis, name)
    queue = DeploymentQueue(redis, name)
    # The mark would expire only after the wait timeout (10 min): clearing it well before is the relay's doing.
    async with running_edge(redis, [deployment(name)]) as edge, aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.post(edge.url + CHAT, json=body(name)))
        await eventually(lambda: _waiting(queue))
        assert await redis.exists(keys.waking(name)) == 1
        if ending == "client_gone":
            request.cancel()
            await asyncio.gather(request, return_exceptions=True)
        else:
            await proxy.fail(await proxy.take_one(), 502, "upstream_failed")
            async with await request as resp:
                assert resp.status == 502
                assert COLD_START_HEADER not in resp.headers
                assert (await resp.json())["error"]["code"] == "upstream_failed"
        await eventually(lambda: _gone(redis, keys.waking(name)))
    assert await redis.exists(keys.cold_start(name)) == 0
    assert cold_starts_observed(name) == 0.0
    [record] = await recent_cold_starts(redis, name)
    assert (record.outcome, record.total_ms) == ("failed", None) and "first_byte" not in record.phases
    assert cold_starts_ended(name, "failed") == 1.0 and cold_starts_ended(name, "ok") == 0.0


async def test_a_no_runner_answer_is_not_recorded_as_a_finished_cold_start(redis: Redis) -> None:
    proxy = StandInProxy(redis, "cold-c")
    async with running_edge(redis, [deployment("cold-c")]) as edge, aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.post(edge.url + CHAT, json=body("cold-c")))
        await proxy.answer(await proxy.take_one(), status=503, body=b'{"error": {"code": "no_runner"}}')
        async with await request as resp:
            assert resp.status == 503
            assert int(resp.headers[COLD_START_HEADER]) >= 0  # the client did wait for it
            assert COLD_START_PHASES_HEADER not in resp.headers
    assert await redis.exists(keys.waking("cold-c"), keys.cold_start("cold-c")) == 0
    [record] = await recent_cold_starts(redis, "cold-c")
    assert record.outcome == "failed" and record.phases == {"dispatched": record.phases["dispatched"]}
    assert cold_starts_ended("cold-c", "failed") == 1.0


async def _waiting(queue: DeploymentQueue) -> bool:
    return (await queue.depth())[0] == 1


async def _gone(redis: Redis, key: str) -> bool:
    return await redis.exists(key) == 0
