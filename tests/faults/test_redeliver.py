"""SIGKILL of a proxy, an API server or a runner while a workload of tagged requests runs, two replicas of each.

Each test accounts for every request (answered correctly once, or a stream under way ended with an error event
and a retry then served) and checks at the runners that no request they completed ever ran again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from tests.e2e import conftest as e2e
from tests.e2e.conftest import Stack, write_deployment
from tests.faults.redeliver_support import (
    DEPLOYMENT,
    REQUEST_TIMEOUT_S,
    Result,
    Workload,
    account,
    report_endings,
    runner_records,
    send,
    start_pair,
    until_holds_both,
    until_runner_busy_with_both,
)
from tiffin.contracts import keys
from tiffin.contracts.queue import Delivery, DeploymentQueue

stack_factory = e2e.stack_factory  # the e2e fixture, here without a conftest of this folder's own


async def test_a_killed_proxy_loses_no_request(
    stack_factory: Any,
    tmp_path: Path,
) -> None:
    pair = start_pair(stack_factory, tmp_path)
    async with aiohttp.ClientSession() as session:
        work = Workload(session, pair.stack.url, "proxy")
        work.start()
        await work.streams_under_way(2)
        await until_holds_both(pair.stack, "echo-api-1")
        killed_at = time.monotonic()
        pair.stack.procs[pair.proxy_name("echo-api-1")].kill()
        results = await work.finish()
        report_endings(results, killed_at)
        await account(pair, session, results, list(pair.runner_ports.values()))
    assert "reclaimed" in pair.stack.procs[pair.proxy_name("echo-api-2")].log()


async def test_a_killed_api_server_hands_its_unanswered_requests_to_the_other(
    stack_factory: Any,
    tmp_path: Path,
) -> None:
    pair = start_pair(stack_factory, tmp_path)
    async with aiohttp.ClientSession() as session:
        work = Workload(session, pair.stack.url, "api")
        work.start()
        await work.streams_under_way(2)
        await until_holds_both(pair.stack, "echo-api-1")
        pair.stack.procs["echo-api-1"].kill()
        results = await work.finish()
        # Non-streamed requests had no reply byte out when their API server died: all served by the other.
        assert all(r.correct for r in results if not r.stream), [r for r in results if not r.stream]
        await account(pair, session, results, list(pair.runner_ports.values()))
    assert "released" in pair.stack.procs[pair.proxy_name("echo-api-1")].log()  # handed back, not answered 502


async def test_a_runner_killed_mid_stream_ends_its_streams_with_an_error_event(
    stack_factory: Any,
    tmp_path: Path,
) -> None:
    pair = start_pair(stack_factory, tmp_path)
    async with aiohttp.ClientSession() as session:
        work = Workload(session, pair.stack.url, "runner")
        work.start()
        await until_runner_busy_with_both(session, pair.runner_ports["echo-runner-1"], "runner")
        # The runner and its engine die at once, as in a crash (the engine would otherwise get a SIGTERM on its
        # runner's death and let its streams finish).
        async with session.get(f"http://127.0.0.1:{pair.runner_ports['echo-runner-1']}/health") as resp:
            engine_pid = (await resp.json())["pid"]
        os.kill(engine_pid, signal.SIGKILL)
        pair.stack.procs["echo-runner-1"].kill()
        results = await work.finish()
        assert all(r.correct for r in results if not r.stream), [r for r in results if not r.stream]
        await account(pair, session, results, [pair.runner_ports["echo-runner-2"]])


async def test_an_answer_a_runner_gave_is_relayed_from_its_record_not_run_again(
    stack_factory: Any, tmp_path: Path
) -> None:
    # A proxy that took the request, had its API server run it to completion, and died before relaying a byte.
    stack: Stack = stack_factory([write_deployment(tmp_path, DEPLOYMENT)])
    _, runner_port = stack.start_runner(DEPLOYMENT, "echo-runner-1")
    stack.procs["echo-runner-1"].wait_http(f"http://127.0.0.1:{runner_port}/health", timeout_s=60)
    _, api_port = stack.start_api(DEPLOYMENT, "echo-api-1")
    stack.start_interceptor()
    redis = Redis.from_url(stack.redis_url)
    queue = DeploymentQueue(redis, DEPLOYMENT)
    try:
        async with aiohttp.ClientSession() as session:
            result = Result("once", stream=False)
            client = asyncio.create_task(send(session, stack.url, result, 0))
            delivery = await _read_one(queue, "ghost")  # "ghost" never heartbeats: dead as soon as it reads
            rid = delivery.envelope.request_id
            assert await queue.take(rid, "ghost") == "taken"
            headers = {**delivery.envelope.headers, "Content-Type": "application/json"}
            url = f"http://127.0.0.1:{api_port}{delivery.envelope.path}"
            async with session.post(url, data=delivery.envelope.body, headers=headers) as resp:
                runner_answer = await resp.json()  # ... and the ghost dies before writing a head frame
            stack.start_proxy(DEPLOYMENT, "echo-api-1", api_port)

            await asyncio.wait_for(client, REQUEST_TIMEOUT_S)
            assert result.correct, result
            assert result.text == runner_answer["choices"][0]["message"]["content"]
            records = await runner_records(session, [runner_port], "arrivals")
            assert len(records["once"]) == 1  # answered from the record: the runner saw it once
            assert await redis.exists(keys.result(rid)) == 0  # relayed and acknowledged: the record is gone
        assert "answered_from_saved_result" in stack.procs["echo-api-1-proxy"].log()
    finally:
        await redis.aclose()


async def _read_one(queue: DeploymentQueue, consumer: str) -> Delivery:
    await queue.ensure_group()
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        while True:
            for delivery in await queue.read(consumer, count=1, block_ms=500):
                return delivery
