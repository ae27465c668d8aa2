"""The stand-in dashboard API (interceptor/dashboard_standin.py): the contract's shapes from read_status alone.

Dropped with the stand-in when the full dashboard API lands; the page's tests then run against that one.
"""

from __future__ import annotations

import aiohttp
from redis.asyncio import Redis

from tests.interceptor.conftest import deployment, running_edge
from tiffin.contracts import keys
from tiffin.contracts.frames import Envelope
from tiffin.contracts.queue import DeploymentQueue, now_ms
from tiffin.contracts.registry import Registry
from tiffin.contracts.status import end_wake

COMPONENT_KEYS = {"desired", "ready", "min_replicas", "max_replicas"}


async def test_the_summary_has_the_contract_shape_and_live_counts(redis: Redis) -> None:
    async with running_edge(redis, [deployment("busy"), deployment("calm")]) as edge:
        envelope = Envelope(request_id="r1", reply_to=keys.reply("nobody"), path="/v1/completions", body=b"{}")
        await DeploymentQueue(redis, "busy").admit(envelope, max_waiting=10, ttl_s=60)
        before = now_ms()
        async with aiohttp.ClientSession() as session, session.get(edge.admin + "/api/dashboard") as resp:
            assert resp.status == 200
            data = await resp.json()
    assert data["generated_at_ms"] >= before and data["window_s"] == 3600
    assert data["totals"] == {"deployments": 2, "idle": 1, "waking": 1, "warm": 0, "api_ready": 0,
                              "runner_ready": 0, "gpu_runners_ready": 0, "queued": 1, "in_flight": 0}  # fmt: skip
    busy, calm = data["deployments"]
    assert (busy["name"], busy["state"], busy["queued"]) == ("busy", "waking", 1)
    assert set(busy["api"]) == set(busy["runner"]) == COMPONENT_KEYS
    assert {"oldest_waiting_s", "idle_s", "in_flight", "runner_load"} <= set(busy)
    assert calm["state"] == "idle" and calm["last_cold_start"] is None
    spark = calm["spark"]
    assert spark["step_s"] == 60 and len(spark["t"]) == len(spark["requests_per_s"]) == len(spark["runner_ready"]) == 60
    assert spark["t"] == sorted(spark["t"])


async def test_the_detail_lists_settings_replicas_and_the_last_cold_start(redis: Redis) -> None:
    async with running_edge(redis, [deployment("one")]) as edge:
        await Registry(redis, "one", "runner").register("runner-1", {"url": "http://r1", "concurrency": 8,
                                                                     "started_at": 1.0})  # fmt: skip
        await redis.set(keys.waking("one"), "r9")
        assert await end_wake(redis, "one", "r9", duration_ms=4200)
        async with aiohttp.ClientSession() as session, session.get(edge.admin + "/api/dashboard/one") as resp:
            assert resp.status == 200
            data = await resp.json()
    assert data["deployment"]["name"] == "one"
    assert data["settings"]["api"] == {"min_replicas": 0, "max_replicas": 4, "concurrency": 32, "target": 32}
    assert data["settings"]["runner"]["gpus"] == 0 and data["settings"]["limits"]["max_queue"] == 100
    [runner] = data["replicas"]["runner"]
    assert (runner["id"], runner["url"], runner["concurrency"]) == ("runner-1", "http://r1", 8)
    assert runner["age_s"] > 0 and data["replicas"]["api"] == []
    cold = data["cold_starts"]
    assert cold["count"] == 1 and cold["p50_s"] == cold["p95_s"] == 4.2
    [record] = cold["recent"]
    assert record["total_ms"] == 4200 and record["outcome"] == "ok" and record["phases"] == {}
    assert data["deployment"]["last_cold_start"] == record
    series = data["series"]
    assert series["step_s"] == 10 and len(series["t"]) == 360
    assert all(series[name] == [None] * 360 for name in ("api_ready", "requests_per_s", "upstream_p95_s"))


async def test_an_unknown_deployment_is_an_openai_shaped_404(redis: Redis) -> None:
    async with (
        running_edge(redis, [deployment("one")]) as edge,
        aiohttp.ClientSession() as session,
        session.get(edge.admin + "/api/dashboard/nope") as resp,
    ):
        assert resp.status == 404
        error = (await resp.json())["error"]
    assert error["code"] == "deployment_not_found" and "nope" in error["message"]
