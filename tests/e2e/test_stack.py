"""The whole request path with real processes: client -> interceptor -> Redis -> proxy -> API server -> runner."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.e2e.conftest import Stack, make_stack, sse_events, write_deployment
from tiffin.common.redis_conn import connect
from tiffin.contracts.queue import DeploymentQueue


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`echo` runs one of each component; `stalled` and `slow-wake` have no replicas at all."""
    folder = tmp_path_factory.mktemp("stack")
    configs = [
        write_deployment(folder, "echo", limits={"max_body_bytes": 4096}),
        write_deployment(folder, "stalled", limits={"max_queue": 2, "wait_timeout_s": 60}),
        write_deployment(folder, "slow-wake", limits={"wait_timeout_s": 1}),
    ]
    stack = make_stack(folder, configs)
    try:
        _, stack.runner_port = stack.start_runner("echo", "echo-runner-1")
        _, api_port = stack.start_api("echo", "echo-api-1")
        stack.start_proxy("echo", "echo-api-1", api_port)
        stack.start_interceptor()
        yield stack
    finally:
        stack.stop()


def chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def wait_depth(stack: Stack, deployment: str, waiting: int, timeout_s: float = 20.0) -> None:
    """Await the queue reaching `waiting` entries (observable state; no fixed sleep)."""
    client = connect(stack.redis_url)
    queue = DeploymentQueue(client, deployment)
    deadline = time.monotonic() + timeout_s
    try:
        while (await queue.depth())[0] != waiting:
            assert time.monotonic() < deadline, f"queue of {deployment} never reached {waiting} waiting"
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


def request_log_lines(stack: Stack, request_id: str, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The interceptor's JSON log lines about one request (its line is written as the request ends)."""
    log_path: Path = stack.procs["interceptor"].log_path
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [json.loads(line) for line in log_path.read_text().splitlines()
                 if request_id in line and line.startswith("{")]  # fmt: skip
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_openai_client_gets_a_reply_through_every_hop(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    reply = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hello there"}])
    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.model == "echo"


def test_openai_client_streams_token_by_token(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    stream = client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "one two three four"}],
        stream=True,
        extra_body={"tiffin_test": {"linger_s": 1.0}},
    )
    deltas = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert "".join(deltas).strip() == "echo: one two three four"
    assert len(deltas) >= 4
    stream.close()
    # The client hangs up right after `[DONE]`: that is a delivered answer, not a client abort (499).
    [line] = request_log_lines(stack, stream.response.headers["x-request-id"])
    assert line["status"] == 200


async def test_stream_chunks_reach_the_client_as_they_are_produced(stack: Stack) -> None:
    delay = 0.4
    body = chat("echo", "a b c d e", stream=True, tiffin_test={"delay_s": delay})
    arrivals: list[float] = []
    raw = b""
    async with aiohttp.ClientSession() as session, session.post(stack.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for data in resp.content.iter_any():
            arrivals.append(time.monotonic())
            raw += data
    events = sse_events(raw)
    assert len(events) >= 6
    # A buffered relay would deliver everything at once; here the first bytes come well before the last.
    assert arrivals[-1] - arrivals[0] >= 2 * delay


async def test_error_bodies_are_openai_shaped(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(stack.url + "/v1/chat/completions", json=chat("nope", "hi")) as resp:
            assert resp.status == 404
            error = (await resp.json())["error"]
            assert error["code"] == "model_not_found" and "echo" in error["message"]
            assert set(error) == {"message", "type", "param", "code"}
        async with session.post(stack.url + "/v1/chat/completions", data=b"{not json") as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["type"] == "invalid_request_error"
        async with session.post(stack.url + "/v1/chat/completions", json=chat("echo", "x" * 5000)) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"]["code"] == "request_too_large"
        async with session.get(stack.url + "/v1/chat/completions") as resp:
            assert resp.status == 405
        async with session.post(stack.url + "/nowhere/v1/embeddings", json={}) as resp:
            assert resp.status == 404


async def test_models_are_listed_without_waking_anything(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session, session.get(stack.url + "/v1/models") as resp:
        assert resp.status == 200
        ids = {m["id"] for m in (await resp.json())["data"]}
    assert ids == {"echo", "stalled", "slow-wake"}


async def test_full_queue_answers_429_with_retry_after(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        held = [asyncio.create_task(session.post(stack.url + "/v1/completions", json={"model": "stalled"}))
                for _ in range(2)]  # fmt: skip
        await wait_depth(stack, "stalled", 2)
        async with session.post(stack.url + "/v1/completions", json={"model": "stalled"}) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) >= 1
            assert (await resp.json())["error"]["code"] == "queue_full"
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
    # The two held clients went away: their requests are withdrawn, the queue is free again.
    await wait_depth(stack, "stalled", 0)


async def test_wait_deadline_answers_504_and_withdraws_the_request(stack: Stack) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url + "/v1/completions", json={"model": "slow-wake"}) as resp,
    ):
        assert resp.status == 504
        assert int(resp.headers["Retry-After"]) >= 1
        assert (await resp.json())["error"]["code"] == "wait_timeout"
    await wait_depth(stack, "slow-wake", 0, timeout_s=1)


async def test_request_id_and_queue_wait_are_logged_once_per_request(stack: Stack) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url + "/v1/chat/completions", json=chat("echo", "log me")) as resp,
    ):
        assert resp.status == 200
        request_id = resp.headers["X-Request-Id"]
        assert float(resp.headers["X-Tiffin-Queue-Ms"]) >= 0
        assert (await resp.json())["choices"][0]["message"]["content"] == "echo: log me"
    lines = request_log_lines(stack, request_id)
    assert len(lines) == 1
    assert lines[0]["deployment"] == "echo" and lines[0]["status"] == 200
    assert lines[0]["queue_wait_ms"] is not None and lines[0]["upstream_ms"] is not None


async def test_admin_port_serves_health_and_metrics(stack: Stack) -> None:
    admin = f"http://127.0.0.1:{stack.admin_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(admin + "/healthz") as resp:
            assert resp.status == 200
        async with session.get(admin + "/metrics") as resp:
            text = await resp.text()
    assert 'tiffin_requests_total{deployment="echo",status="200"}' in text
    assert "tiffin_queue_wait_seconds_bucket" in text
    async with aiohttp.ClientSession() as session, session.get(stack.url + "/metrics") as resp:
        assert resp.status == 404  # metrics are not on the public port


async def test_proxy_takes_no_more_than_its_concurrency_and_cancels_abandoned_work(stack: Stack) -> None:
    """Six held requests, api.concurrency 4: four in flight, two waiting; clients leave, the runner is told."""
    runner = f"http://127.0.0.1:{stack.runner_port}"
    async with aiohttp.ClientSession() as probe:
        async with probe.get(runner + "/_test/disconnects") as resp:
            disconnects_before = await resp.json()

        async def held_at_runner() -> int:
            async with probe.get(runner + "/_test/arrivals") as resp:
                return sum(1 for a in await resp.json() if str(a["key"]).startswith("cap-"))

        async with aiohttp.ClientSession() as session:
            held = [
                asyncio.create_task(session.post(stack.url + "/v1/chat/completions",
                                                 json=chat("echo", "hold", tiffin_test={"hold_once": f"cap-{i}"})))
                for i in range(6)
            ]  # fmt: skip
            client = connect(stack.redis_url)
            queue = DeploymentQueue(client, "echo")
            deadline = time.monotonic() + 60
            while await queue.depth() != (2, 4) or await held_at_runner() != 4:
                assert time.monotonic() < deadline, f"depth stayed {await queue.depth()}, expected (2, 4)"
                await asyncio.sleep(0.05)
            for task in held:
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)
        # Every abandoned request leaves the queue, and the four in flight are aborted at the runner.
        deadline = time.monotonic() + 60
        while await queue.depth() != (0, 0):
            assert time.monotonic() < deadline, f"depth stayed {await queue.depth()} after the clients left"
            await asyncio.sleep(0.05)
        await client.aclose()
        # Every abandoned request that reached the runner was aborted there: the four in flight, and any
        # waiting one a proxy took in the moment between its neighbours' cancels and its own.
        arrived = await held_at_runner()
        assert 4 <= arrived <= 6
        deadline = time.monotonic() + 60
        while True:
            async with probe.get(runner + "/_test/disconnects") as resp:
                if await resp.json() - disconnects_before == arrived:
                    break
            assert time.monotonic() < deadline, f"the runner never saw all {arrived} abandoned requests go away"
            await asyncio.sleep(0.05)
