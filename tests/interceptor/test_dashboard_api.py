"""The admin listener's dashboard API and Redis-read gauges, in process on real sockets and a real Redis.

Replicas are registered through the registry contract (as proxies and runners do), requests go through the real
edge and are answered by the stand-in proxy, so every number below was written by the code that writes it live.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from interceptor.app import admin_app
from tests.interceptor.conftest import Edge, StandInProxy, running_edge, serving
from tests.tiffin.contracts.test_queue import envelope
from tiffin.common.redis_conn import connect_bounded
from tiffin.contracts import keys
from tiffin.contracts.coldstart import ColdStart
from tiffin.contracts.config import Deployment
from tiffin.contracts.frames import QUEUE_MS_HEADER, Frame
from tiffin.contracts.load import LoadReport, RunnerLoad
from tiffin.contracts.queue import DeploymentQueue
from tiffin.contracts.registry import Registry
from tiffin.contracts.status import write_desired
from tiffin.local.ports import free_port

CHAT = "/v1/chat/completions"
ENTRY_KEYS = {"name", "state", "api", "runner", "queued", "in_flight", "runner_load", "oldest_waiting_s", "idle_s",
              "last_cold_start", "spark"}  # fmt: skip
TOTALS_KEYS = {"deployments", "idle", "sleeping", "waking", "warm", "api_ready", "runner_ready", "gpu_runners_ready",
               "queued", "in_flight"}  # fmt: skip
SERIES_KEYS = {"step_s", "t", "api_ready", "api_desired", "runner_ready", "runner_desired", "requests_per_s",
               "errors_per_s", "queue_wait_p50_s", "queue_wait_p95_s", "upstream_p50_s", "upstream_p95_s"}  # fmt: skip


def deployments() -> list[Deployment]:
    """`small` runs on CPUs; `big` wants a GPU per runner."""
    open_ = {"require_api_key": False}
    return [
        Deployment.model_validate({"name": "small", "model": "smollm2", "auth": open_,
                                   "api": {"max_replicas": 3}, "scaling": {"idle_period_s": 120}}),
        Deployment.model_validate({"name": "big", "model": "smollm2", "auth": open_,
                                   "runner": {"gpus": 1, "gpu_type": "nvidia-l4", "concurrency": 4}}),
    ]  # fmt: skip


@pytest.fixture
async def edge(redis: Redis) -> AsyncIterator[Edge]:
    async with running_edge(redis, deployments()) as running:
        yield running


async def warm_up(redis: Redis) -> None:
    """`small` warm (one API server holding one request, one runner) with two cold starts; `big` has one GPU
    runner but no API server, and a request waiting."""
    for name, component, rid in (("small", "api", "small-api"), ("small", "runner", "small-runner"),
                                 ("big", "runner", "big-runner")):  # fmt: skip
        info = {"url": f"http://{rid}", "concurrency": 8, "started_at": time.time() - 30}
        await Registry(redis, name, component, ttl_s=60).register(rid, info)  # type: ignore[arg-type]
        await write_desired(redis, name, component, 1)  # type: ignore[arg-type]
    held = StandInProxy(redis, "small", "small-api")
    await DeploymentQueue(redis, "small").ensure_group()
    await DeploymentQueue(redis, "small").admit(envelope("held"), max_waiting=10, ttl_s=60)
    await held.take_one()
    await RunnerLoad(redis, "small", ttl_s=60).report("small-api", LoadReport(runners={"small-runner": 1}))
    await DeploymentQueue(redis, "big").admit(envelope("waits"), max_waiting=10, ttl_s=60)
    now_ms = int(time.time() * 1000)
    for record in (ColdStart("c1", now_ms - 60_000, 4000.0, {"activated": 30.0, "first_byte": 4000.0}, "ok"),
                   ColdStart("c2", now_ms - 30_000, 8000.0, {"activated": 25.0}, "ok")):  # fmt: skip
        await redis.lpush(keys.cold_starts("small"), json.dumps(record.to_json()))


async def get(session: aiohttp.ClientSession, url: str, status: int = 200) -> Any:
    async with session.get(url) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json()


async def serve_one(edge: Edge, redis: Redis, status: int) -> int:
    """One request through the edge, answered (or failed, for status >= 500) by a stand-in replica."""
    proxy = StandInProxy(redis, "small", "small-api")
    async with aiohttp.ClientSession() as session:
        sent = asyncio.ensure_future(session.post(edge.url + CHAT, json={"model": "small", "messages": []}))
        delivery = await proxy.take_one()
        rid = delivery.envelope.request_id
        if status >= 500:
            await proxy.fail(delivery, status, "upstream_failed")
        else:
            head = Frame.head(rid, proxy.name, status, {"content-type": "application/json", QUEUE_MS_HEADER: "20"})
            await proxy.queue.start(delivery.envelope, head)
            await proxy.queue.send(delivery.envelope.reply_to, Frame.chunk(rid, proxy.name, b"{}"))
            await proxy.queue.send(delivery.envelope.reply_to, Frame.end(rid, proxy.name))
            await proxy.queue.finish(delivery.entry_id)
        async with await sent as resp:
            await resp.read()
            return resp.status


async def test_the_overview_has_the_contract_shape_states_and_totals(edge: Edge, redis: Redis) -> None:
    await warm_up(redis)
    async with aiohttp.ClientSession() as session:
        data = await get(session, edge.admin + "/api/dashboard")
    assert set(data) == {"generated_at_ms", "window_s", "totals", "deployments", "runner_pool"}
    assert data["window_s"] == 3600 and abs(data["generated_at_ms"] - time.time() * 1000) < 60_000
    small, big = data["deployments"]  # config order
    assert set(small) == ENTRY_KEYS and set(big) == ENTRY_KEYS
    assert (small["name"], small["state"], big["name"], big["state"]) == ("small", "warm", "big", "waking")
    assert small["api"] == {"desired": 1, "ready": 1, "min_replicas": 0, "max_replicas": 3, "cluster_ready": None}
    assert (small["queued"], small["in_flight"], small["runner_load"]) == (0, 1, 1)
    assert big["queued"] == 1 and big["oldest_waiting_s"] is not None and big["oldest_waiting_s"] >= 0
    assert small["oldest_waiting_s"] is None
    assert small["last_cold_start"]["request_id"] == "c2"  # the newest
    assert big["last_cold_start"] is None
    spark = small["spark"]
    assert spark["step_s"] == 60 and len(spark["t"]) == len(spark["requests_per_s"]) == len(spark["runner_ready"]) == 60
    assert data["totals"] == {"deployments": 2, "idle": 0, "sleeping": 0, "waking": 1, "warm": 1, "api_ready": 1,
                              "runner_ready": 2, "gpu_runners_ready": 1, "queued": 1, "in_flight": 1}  # fmt: skip
    assert set(data["totals"]) == TOTALS_KEYS


async def test_the_detail_shows_settings_replicas_cold_starts_and_the_hour(edge: Edge, redis: Redis) -> None:
    await warm_up(redis)
    assert await serve_one(edge, redis, 200) == 200
    assert await serve_one(edge, redis, 502) == 502
    await edge.relay.history.flush(redis)  # what the interceptor's history task does every couple of seconds
    async with aiohttp.ClientSession() as session:
        data = await get(session, edge.admin + "/api/dashboard/small")
        big = await get(session, edge.admin + "/api/dashboard/big")
    assert set(data) == {"generated_at_ms", "deployment", "settings", "replicas", "cold_starts", "series"}
    assert set(data["deployment"]) == ENTRY_KEYS and data["deployment"]["state"] == "warm"
    assert data["settings"]["api"] == {"min_replicas": 0, "max_replicas": 3, "concurrency": 32, "target": 32}
    assert data["settings"]["idle_period_s"] == 120 and data["settings"]["limits"]["max_queue"] == 100
    assert big["settings"]["runner"]["gpus"] == 1 and big["settings"]["runner"]["gpu_type"] == "nvidia-l4"

    (api,) = data["replicas"]["api"]
    (runner,) = data["replicas"]["runner"]
    assert (api["id"], api["url"], api["in_flight"], api["concurrency"]) == ("small-api", "http://small-api", 1, 8)
    assert (runner["id"], runner["in_flight"]) == ("small-runner", 1)
    assert 25 <= api["age_s"] < 600

    colds = data["cold_starts"]
    assert colds["count"] == 2 and colds["p50_s"] == pytest.approx(6.0) and colds["p95_s"] == pytest.approx(7.8)
    assert [c["request_id"] for c in colds["recent"]] == ["c2", "c1"]
    assert colds["recent"][1]["phases"] == {"activated": 30.0, "first_byte": 4000.0}

    series = data["series"]
    assert set(series) == SERIES_KEYS and series["step_s"] == 10
    assert all(len(series[k]) == 360 for k in SERIES_KEYS - {"step_s"})
    # The two requests may straddle a step boundary: look at the steps that have them.
    served = [i for i, v in enumerate(series["requests_per_s"]) if v]
    assert served and all(i >= 357 for i in served)  # in the last half-minute, not anywhere else
    assert any(series["errors_per_s"][i] for i in served)  # the 502
    assert all(series["errors_per_s"][i] <= series["requests_per_s"][i] for i in served)
    timed = [i for i, v in enumerate(series["queue_wait_p50_s"]) if v is not None]
    assert len(timed) == 1  # only the answered request had a queue wait (the 502 never reached a replica)
    assert 0.01 < series["queue_wait_p50_s"][timed[0]] <= 0.025  # the 20 ms the replica reported, in its bucket
    assert series["upstream_p50_s"][timed[0]] is not None
    assert series["requests_per_s"][0] is None  # an hour ago nothing was recorded


async def test_an_unknown_deployment_is_a_404_with_an_openai_error(edge: Edge) -> None:
    async with aiohttp.ClientSession() as session:
        body = await get(session, edge.admin + "/api/dashboard/nope", status=404)
    assert body["error"]["code"] == "deployment_not_found" and "nope" in body["error"]["message"]


async def test_metrics_carry_the_redis_read_gauges_and_upstream_time(edge: Edge, redis: Redis) -> None:
    await warm_up(redis)
    await serve_one(edge, redis, 200)
    async with aiohttp.ClientSession() as session, session.get(edge.admin + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("tiffin_replicas_ready", deployment="small", component="api") == 1
    assert value("tiffin_replicas_desired", deployment="big", component="runner") == 1
    assert value("tiffin_deployment_state", deployment="small", state="warm") == 1
    assert value("tiffin_deployment_state", deployment="small", state="idle") == 0
    assert value("tiffin_deployment_state", deployment="big", state="waking") == 1
    assert value("tiffin_queue_requests", deployment="big", state="waiting") == 1
    assert value("tiffin_queue_requests", deployment="small", state="in_flight") == 1
    assert value("tiffin_queue_oldest_wait_seconds", deployment="big") >= 0
    assert abs(value("tiffin_last_request_timestamp_seconds", deployment="small") - time.time()) < 600
    assert value("tiffin_gpu_runners_ready") == 1
    assert value("tiffin_upstream_seconds_count", deployment="small") >= 1


async def test_metrics_still_answer_while_redis_is_away_and_the_dashboard_says_503(redis: Redis) -> None:
    gone = connect_bounded(f"redis://127.0.0.1:{free_port()}/0", max_connections=4, timeout_s=1.0)  # nobody there
    async with running_edge(redis, deployments()) as running:
        try:
            async with serving(admin_app(running.relay, gone)) as admin, aiohttp.ClientSession() as session:
                async with session.get(admin + "/metrics") as resp:
                    assert resp.status == 200
                    text = await resp.text()
                body = await get(session, admin + "/api/dashboard", status=503)
                await get(session, admin + "/api/dashboard/small", status=503)
        finally:
            await gone.aclose()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert "tiffin_requests_in_progress" in names  # the interceptor's own metrics are there
    assert "tiffin_replicas_ready" not in names  # the shared gauges are left out, not made up
    assert body["error"]["code"] == "redis_unavailable"
