"""A proxy that dies holding a request: replayed if no reply byte left, a clear error if some did."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.conftest import Stack, sse_events, write_deployment


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
