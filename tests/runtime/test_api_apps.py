"""An application inside one API server: its LLM calls are balanced and reported like forwarded requests."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from tests.procs import ROOT
from tests.runtime import NAME, Server, StartApi, until
from tiffin.contracts.apps import read_openapi
from tiffin.contracts.frames import NOT_SERVED_HEADER
from tiffin.contracts.load import LoadReport, RunnerLoad

API = "api-apps"


async def start_greeter(start_api: StartApi, tmp_path: Path) -> Server:
    shutil.copy(ROOT / "tests" / "e2e" / "sample_app.py", tmp_path / "greeter_app.py")
    return await start_api(env={"TIFFIN_REPLICA_ID": API}, app="greeter_app:Greeter")


async def test_an_applications_llm_call_counts_at_its_runner_while_it_streams(
    start_api: StartApi, runners: list[Server], redis: Redis, tmp_path: Path
) -> None:
    api = await start_greeter(start_api, tmp_path)
    loads = RunnerLoad(redis, NAME)

    async def report() -> LoadReport | None:
        return (await loads.reports()).get(API)

    async def idle() -> bool:
        return await report() == LoadReport()

    await until(idle, what="the idle API server reports nothing at runners")
    # The description is published when the API server starts (the docs page reads it from Redis).
    document = await read_openapi(redis, NAME)
    assert document is not None and f"/v1/apps/{NAME}/greet" in document["paths"]
    body = {"name": "a b c d e f g h i j", "tiffin_test": {"delay_s": 0.3}}  # about 3 s of stream
    received = b""
    async with aiohttp.ClientSession() as http, http.post(f"{api.url}/v1/apps/{NAME}/words", json=body) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"

        async def in_flight() -> bool:
            found = await report()
            return found is not None and sum(found.runners.values()) == 1

        await until(in_flight, what="the application's call is reported in flight at a runner")
        assert await loads.total() == 1
        async for data in resp.content.iter_any():
            received += data
    assert received.startswith(b'data: "echo:"\n\n') and received.endswith(b"data: [DONE]\n\n")
    await until(idle, what="the finished call no longer counts")


async def test_a_request_waiting_for_a_runner_when_the_server_drains_is_handed_back_unserved(
    start_api: StartApi, redis: Redis, tmp_path: Path
) -> None:
    api = await start_greeter(start_api, tmp_path)  # no runner registered: the call waits for one
    async with aiohttp.ClientSession() as http:
        pending = asyncio.ensure_future(http.post(f"{api.url}/v1/apps/{NAME}/greet", json={"name": "Ada"}))
        loads = RunnerLoad(redis, NAME)

        async def waiting() -> bool:
            found = (await loads.reports()).get(API)
            return found is not None and found.waiting == 1

        await until(waiting, what="the application's call waits for a runner")
        api.proc.popen.send_signal(signal.SIGTERM)
        async with await pending as resp:
            assert resp.status == 503
            # No runner saw it: the proxy puts it back in the queue for another replica instead of failing it.
            assert resp.headers[NOT_SERVED_HEADER] == "draining"
            assert (await resp.json())["error"]["code"] == "draining"
