"""A request its API server turned away unserved goes back to the queue for another replica, not to the client.

Two ways that happens: the API server is shutting down (in Kubernetes a pod's proxy and API server get
SIGTERM together, so a request can still be waiting in the API server for a runner slot), or the API server
is gone while its proxy lives on.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.conftest import Stack, write_deployment
from tests.e2e.test_failover import arrivals
from tests.runtime import until


def events(log: str, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log.splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            event = json.loads(line)
            if event.get("event") == name:
                out.append(event)
    return out


async def waiting_in(session: aiohttp.ClientSession, api_port: int, count: int) -> bool:
    """Whether `count` requests wait inside the API server for a runner (its own gauge says)."""
    async with session.get(f"http://127.0.0.1:{api_port}/metrics") as resp:
        return f"tiffin_api_waiting_requests {float(count)}" in (await resp.text()).splitlines()


def chat(content: str) -> dict[str, Any]:
    return {"model": "echo", "messages": [{"role": "user", "content": content}], "tiffin_test": {"key": content}}


async def test_a_request_waiting_in_a_terminated_api_server_is_served_by_another(
    stack_factory: Any, tmp_path: Path
) -> None:
    stack: Stack = stack_factory([write_deployment(tmp_path, "echo")])
    stack.start_interceptor()
    api_1, port_1 = stack.start_api("echo", "echo-api-1")
    proxy_1 = stack.start_proxy("echo", "echo-api-1", port_1)
    async with aiohttp.ClientSession() as session:
        # No runner yet: the request waits inside API server 1 for one.
        request = asyncio.create_task(session.post(stack.url + "/v1/chat/completions", json=chat("handed-over")))
        await until(lambda: waiting_in(session, port_1, 1), timeout_s=30, what="the request waits in API server 1")
        _, port_2 = stack.start_api("echo", "echo-api-2")
        stack.start_proxy("echo", "echo-api-2", port_2)

        # The whole replica is terminated at once, as Kubernetes does with a pod's containers.
        api_1.popen.send_signal(signal.SIGTERM)
        proxy_1.popen.send_signal(signal.SIGTERM)
        await until(lambda: bool(events(proxy_1.log(), "released")), timeout_s=30, what="proxy 1 hands it back")

        _, runner_port = stack.start_runner("echo", "echo-runner-1")
        async with await asyncio.wait_for(request, 60) as resp:
            assert resp.status == 200
            assert (await resp.json())["choices"][0]["message"]["content"] == "echo: handed-over"
        assert await arrivals(session, runner_port, "handed-over") == 1
    # Handed back for the reason API server 1 gave; if proxy 1 read it again before it stopped, it handed it
    # back at once, without offering it to API server 1.
    released = events(proxy_1.log(), "released")
    assert released[0]["reason"] == "draining"
    assert all(r["reason"] == "upstream not taking requests" for r in released[1:])
    assert all(r["requeued"] for r in released)
    assert proxy_1.popen.wait(30) == 0 and api_1.popen.wait(30) == 0


async def test_a_proxy_whose_api_server_is_gone_hands_requests_back_and_takes_no_more(
    stack_factory: Any, tmp_path: Path
) -> None:
    stack: Stack = stack_factory([write_deployment(tmp_path, "echo")])
    runner, runner_port = stack.start_runner("echo", "echo-runner-1")
    runner.wait_http(f"http://127.0.0.1:{runner_port}/health", timeout_s=60)
    stack.start_interceptor()
    api_1, port_1 = stack.start_api("echo", "echo-api-1")
    proxy_1 = stack.start_proxy("echo", "echo-api-1", port_1)
    url = stack.url + "/v1/chat/completions"
    async with aiohttp.ClientSession() as session:
        await until(lambda: bool(events(proxy_1.log(), "consuming")), timeout_s=30, what="proxy 1 consumes")
        api_1.kill()  # its proxy does not know yet
        first = asyncio.create_task(session.post(url, json=chat("first")))
        await until(lambda: bool(events(proxy_1.log(), "released")), timeout_s=30, what="proxy 1 hands it back")
        _, port_2 = stack.start_api("echo", "echo-api-2")
        stack.start_proxy("echo", "echo-api-2", port_2)
        async with await asyncio.wait_for(first, 60) as resp:
            assert resp.status == 200
            assert (await resp.json())["choices"][0]["message"]["content"] == "echo: first"
        # Proxy 1 takes nothing more while its API server is down: every later request goes to replica 2.
        for i in range(5):
            async with session.post(url, json=chat(f"later-{i}")) as resp:
                assert resp.status == 200
        assert await arrivals(session, runner_port, "first") == 1
    released = events(proxy_1.log(), "released")
    assert released[0]["reason"].startswith("unreachable")
    # Only the first request ever reached proxy 1 (perhaps twice, if its read was already under way).
    assert {r["request_id"] for r in released} == {released[0]["request_id"]}
    assert all(r["requeued"] for r in released)
    assert proxy_1.alive()
