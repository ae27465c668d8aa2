"""Replicas that die: a proxy holding a request (replayed if no reply byte left, a clear error if some did), and
an interceptor whose clients are gone with it (what it had queued or in flight is withdrawn, not served)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from tests.e2e.conftest import Stack, sse_events, write_deployment
from tiffin.contracts.queue import DeploymentQueue


async def arrivals(session: aiohttp.ClientSession, runner_port: int, key: str | None) -> int:
    async with session.get(f"http://127.0.0.1:{runner_port}/_test/arrivals") as resp:
        return sum(1 for a in await resp.json() if a.get("key") == key)


async def wait_arrivals(session: aiohttp.ClientSession, runner_port: int, key: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while await arrivals(session, runner_port, key) < count:
        assert time.monotonic() < deadline, f"the runner never saw {count} requests with key {key}"
        await asyncio.sleep(0.05)


def start_echo(stack_factory: Any, tmp_path: Path) -> tuple[Stack, int, int]:
    stack: Stack = stack_factory([write_deployment(tmp_path, "echo")])
    runner, runner_port = stack.start_runner("echo", "echo-runner-1")
    runner.wait_http(f"http://127.0.0.1:{runner_port}/health", timeout_s=60)
    _, api_port = stack.start_api("echo", "echo-api-1")
    stack.start_interceptor()
    return stack, runner_port, api_port


async def test_request_held_by_a_killed_proxy_is_answered_by_another(stack_factory: Any, tmp_path: Path) -> None:
    stack, runner_port, api_port = start_echo(stack_factory, tmp_path)
    proxy_a = stack.start_proxy("echo", "proxy-a", api_port)
    body = {"model": "echo", "messages": [{"role": "user", "content": "survive"}],
            "tiffin_test": {"hold_once": "failover"}}  # fmt: skip
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.post(stack.url + "/v1/chat/completions", json=body))
        # Proxy A has taken the request and forwarded it; the runner holds this first copy unanswered.
        await wait_arrivals(session, runner_port, "failover", 1)
        proxy_a.kill()
        stack.start_proxy("echo", "proxy-b", api_port)
        resp = await asyncio.wait_for(request, 60)
        assert resp.status == 200
        reply = await resp.json()
        assert reply["choices"][0]["message"]["content"] == "echo: survive"
        # Delivered again exactly once: the runner saw the original and one replay.
        assert await arrivals(session, runner_port, "failover") == 2
    assert "reclaimed" in stack.procs["proxy-b-proxy"].log()


async def test_proxy_killed_mid_stream_ends_the_stream_with_an_error(stack_factory: Any, tmp_path: Path) -> None:
    stack, runner_port, api_port = start_echo(stack_factory, tmp_path)
    proxy_a = stack.start_proxy("echo", "proxy-a", api_port)
    words = " ".join(f"w{i}" for i in range(40))
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": words}],
            "tiffin_test": {"delay_s": 0.25}}  # fmt: skip
    async with aiohttp.ClientSession() as session:
        before = await arrivals(session, runner_port, None)  # the runner's own warm-up counts here
        async with session.post(stack.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            raw = await resp.content.readuntil(b"\n\n")  # the first event has reached the client
            proxy_a.kill()
            stack.start_proxy("echo", "proxy-b", api_port)
            raw += await asyncio.wait_for(resp.content.read(), 60)
        events = sse_events(raw)
        assert events[-1]["error"]["code"] == "replica_failed"
        assert all("error" not in e for e in events[:-1])
        # Not replayed: bytes had reached the client, so a second copy would have duplicated them.
        assert await arrivals(session, runner_port, None) == before + 1


# An interceptor that dies takes its clients' connections with it. Its reply stream expires after
# TIFFIN_REPLY_TTL_S (2 s here instead of 60), which is how everything else learns it is gone.
SHORT_LIVED_EDGE = {"TIFFIN_REPLY_TTL_S": "2"}


def chat(content: str, **hooks: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "echo", "messages": [{"role": "user", "content": content}]}
    if hooks:
        body["tiffin_test"] = hooks
    return body


async def queue_depth(stack: Stack) -> tuple[int, int]:
    redis = Redis.from_url(stack.redis_url)
    try:
        return await DeploymentQueue(redis, "echo").depth()
    finally:
        await redis.aclose()


async def eventually_depth(stack: Stack, wanted: tuple[int, int], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while (depth := await queue_depth(stack)) != wanted:
        assert time.monotonic() < deadline, f"queue depth stayed {depth}, wanted {wanted}"
        await asyncio.sleep(0.1)  # observing other processes' work in Redis; no event to await


async def send_and_abandon(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> asyncio.Task[Any]:
    """A request whose answer the test never reads: its interceptor is about to be killed."""

    async def post() -> None:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.post(url, json=body) as resp:
                await resp.read()

    return asyncio.create_task(post())


def start_echo_one_at_a_time(stack_factory: Any, tmp_path: Path) -> tuple[Stack, int, int]:
    """Like `start_echo`, but each proxy forwards one request at a time, so the next ones wait in the queue."""
    stack: Stack = stack_factory([write_deployment(tmp_path, "echo", api={"concurrency": 1})])
    runner, runner_port = stack.start_runner("echo", "echo-runner-1")
    runner.wait_http(f"http://127.0.0.1:{runner_port}/health", timeout_s=60)
    _, api_port = stack.start_api("echo", "echo-api-1")
    return stack, runner_port, api_port


async def test_a_proxy_stops_serving_an_interceptor_that_died(stack_factory: Any, tmp_path: Path) -> None:
    stack, runner_port, api_port = start_echo_one_at_a_time(stack_factory, tmp_path)
    # Sweeping only at start: what happens here is the proxy's own doing.
    edge = stack.start_interceptor(**SHORT_LIVED_EDGE, TIFFIN_ORPHAN_SWEEP_S="3600")
    proxy = stack.start_proxy("echo", "proxy-a", api_port)
    url = stack.url + "/v1/chat/completions"
    words = " ".join(f"w{i}" for i in range(200))
    async with aiohttp.ClientSession() as session:
        streaming = {**chat(words, delay_s=0.1), "stream": True}
        async with session.post(url, json=streaming) as resp:
            assert resp.status == 200
            await resp.content.readuntil(b"\n\n")  # streaming, and holding the proxy's only slot
            waiting = [
                await send_and_abandon(session, url, chat("nobody reads this", hold_once="orphan")) for _ in range(2)
            ]
            await eventually_depth(stack, (2, 1))
            edge.kill()
        # 200 chunks at 0.1 s would take 20 s: the proxy stops the stream once the reply stream has expired,
        # then takes the two waiting requests, finds their interceptor gone and forwards neither.
        await eventually_depth(stack, (0, 0))
        assert await arrivals(session, runner_port, "orphan") == 0
        for task in waiting:
            await task
    log = proxy.log()
    assert log.count('"orphaned_mid_reply"') == 1
    assert log.count('"orphaned"') == 2


async def test_another_interceptor_withdraws_what_a_dead_one_had_queued(stack_factory: Any, tmp_path: Path) -> None:
    stack, runner_port, api_port = start_echo_one_at_a_time(stack_factory, tmp_path)
    edge_a = stack.start_interceptor(**SHORT_LIVED_EDGE)
    stack.start_proxy("echo", "proxy-a", api_port)
    url = stack.url + "/v1/chat/completions"
    async with aiohttp.ClientSession() as session:
        held = await send_and_abandon(session, url, chat("held", hold_once="orphan-held"))
        await wait_arrivals(session, runner_port, "orphan-held", 1)  # in flight, the proxy's only slot taken
        waiting = [await send_and_abandon(session, url, chat("waits", hold_once="orphan-wait")) for _ in range(3)]
        await eventually_depth(stack, (3, 1))
        edge_a.kill()
        await held
        for task in waiting:
            await task

        # Its successor sweeps often: once the dead one's reply stream expires, the queue empties, and the held
        # request's upstream call is aborted (the runner sees its client go) instead of running on.
        stack.start_interceptor("interceptor-b", **SHORT_LIVED_EDGE, TIFFIN_ORPHAN_SWEEP_S="0.2")
        await eventually_depth(stack, (0, 0))
        assert await arrivals(session, runner_port, "orphan-wait") == 0
        deadline = time.monotonic() + 30
        while True:
            async with session.get(f"http://127.0.0.1:{runner_port}/_test/disconnects") as resp:
                if await resp.json() >= 1:
                    break
            assert time.monotonic() < deadline, "the held request was never aborted at the runner"
            await asyncio.sleep(0.1)

        # The deployment serves the new interceptor's clients as before.
        async with session.post(url, json=chat("after")) as resp:
            assert resp.status == 200
            assert (await resp.json())["choices"][0]["message"]["content"] == "echo: after"
        async with session.get(f"http://127.0.0.1:{stack.admin_port}/metrics") as resp:
            metrics_text = await resp.text()
    line = 'tiffin_requests_withdrawn_total{deployment="echo",reason="interceptor_gone"}'
    assert f"{line} 4.0" in metrics_text
