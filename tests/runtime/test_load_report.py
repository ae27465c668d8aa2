"""The API server's runner load report (`tiffin.contracts.load`) in a real Redis, from a real API server."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from tests.runtime import NAME, Server, StartApi, chat, until
from tiffin.common.redis_conn import connect
from tiffin.contracts import keys
from tiffin.contracts.load import LoadReport, RunnerLoad
from tiffin.local.redis_server import EmbeddedRedis

API = "api-1"


async def report_of(redis: Redis, replica: str = API) -> LoadReport | None:
    return (await RunnerLoad(redis, NAME).reports()).get(replica)


def log_events(server: Server) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.proc.log().splitlines() if line.startswith("{")]


async def wait_reported(redis: Redis) -> None:
    async def reported() -> bool:
        return await report_of(redis) is not None

    await until(reported, what="the API server's report is written")


async def test_a_request_counts_at_its_runner_while_it_runs_and_not_after(
    start_api: StartApi, runners: list[Server], redis: Redis
) -> None:
    api = await start_api(env={"TIFFIN_REPLICA_ID": API})

    async def idle_reported() -> bool:
        return await report_of(redis) == LoadReport()

    await until(idle_reported, what="the idle API server reports nothing at runners")
    # About 4 s of stream: long enough to see it in flight, and it ends on its own.
    body = chat("a b c d e f g h i j k l", stream=True, tiffin_test={"delay_s": 0.3})
    received = b""
    async with aiohttp.ClientSession() as http, http.post(f"{api.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        runner = next(f"r{i}" for i, r in enumerate(runners, 1) if str(r.port) == resp.headers["X-Upstream-Port"])

        async def in_flight_reported() -> bool:
            return await report_of(redis) == LoadReport(waiting=0, runners={runner: 1})

        await until(in_flight_reported, what=f"the request is reported in flight at {runner}")
        assert await RunnerLoad(redis, NAME).at_runner(runner) == 1
        assert await RunnerLoad(redis, NAME).total() == 1
        async for data in resp.content.iter_any():
            received += data
    assert received.endswith(b"data: [DONE]\n\n")  # the report was read while the stream was still open
    await until(idle_reported, what="the finished request no longer counts")
    assert await RunnerLoad(redis, NAME).total() == 0


async def test_requests_waiting_for_a_runner_are_reported_as_waiting(start_api: StartApi, redis: Redis) -> None:
    api = await start_api(env={"TIFFIN_REPLICA_ID": API})

    async def ask() -> None:
        async with aiohttp.ClientSession() as http:
            await http.post(f"{api.url}/v1/chat/completions", json=chat("anyone?"))

    asks = [asyncio.create_task(ask()) for _ in range(2)]

    async def both_waiting() -> bool:
        return await report_of(redis) == LoadReport(waiting=2)

    await until(both_waiting, what="two requests reported waiting for a runner")
    assert await RunnerLoad(redis, NAME).total() == 2

    for task in asks:
        task.cancel()  # the clients leave: their requests stop waiting
    await asyncio.gather(*asks, return_exceptions=True)

    async def none_waiting() -> bool:
        return await report_of(redis) == LoadReport()

    await until(none_waiting, what="the requests whose clients left no longer wait")


async def test_an_unchanged_report_is_refreshed_and_lapses_after_sigkill(start_api: StartApi, redis: Redis) -> None:
    api = await start_api(env={"TIFFIN_REPLICA_ID": API, "TIFFIN_HEARTBEAT_TTL_S": "1"})
    await wait_reported(redis)
    first_expiry = await redis.zscore(keys.runner_load(NAME), API)
    assert first_expiry is not None

    async def refreshed() -> bool:
        expiry = await redis.zscore(keys.runner_load(NAME), API)
        return expiry is not None and expiry > first_expiry

    await until(refreshed, what="the idle report's expiry moves on")

    api.proc.kill()  # no clean shutdown: only the TTL can remove the report

    async def lapsed() -> bool:
        return await RunnerLoad(redis, NAME).reports() == {}

    await until(lapsed, timeout_s=5, what="the dead API server's report lapses (TTL 1 s)")


async def test_a_clean_shutdown_withdraws_the_report(start_api: StartApi, redis: Redis) -> None:
    api = await start_api(env={"TIFFIN_REPLICA_ID": API, "TIFFIN_HEARTBEAT_TTL_S": "300"})
    await wait_reported(redis)
    api.proc.popen.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(api.proc.popen.wait, 30) == 0
    # With a 300 s TTL, only the withdrawal can have removed it this soon.
    assert await RunnerLoad(redis, NAME).reports() == {}
    assert await redis.hget(keys.runner_load_values(NAME), API) is None
    assert not [e for e in log_events(api) if e.get("event") in {"load_report_failed", "load_withdraw_failed"}]


async def test_a_redis_outage_is_logged_and_the_report_comes_back_after_it(start_api: StartApi, tmp_path: Path) -> None:
    own = EmbeddedRedis(tmp_path / "own-redis")
    own.start()
    try:
        api = await start_api(env={"TIFFIN_REPLICA_ID": API, "REDIS_URL": own.url, "TIFFIN_HEARTBEAT_TTL_S": "1"})
        client = connect(own.url)
        try:
            await wait_reported(client)
        finally:
            await client.aclose()
        own.stop()

        def failures_logged() -> bool:
            return any(e.get("event") == "load_report_failed" for e in log_events(api))

        await until(failures_logged, what="the failed refresh is logged")
        async with aiohttp.ClientSession() as http, http.get(f"{api.url}/health") as resp:
            assert resp.status == 200  # the server lives on
        own.start()  # same port and data
        client = connect(own.url)
        try:
            await client.flushall()  # whatever the report was, only a new write can bring it back
            await wait_reported(client)
        finally:
            await client.aclose()
        assert any(e.get("event") == "load_report_recovered" for e in log_events(api))
        assert api.proc.alive()
    finally:
        own.stop()
