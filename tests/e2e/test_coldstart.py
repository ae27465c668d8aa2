"""A cold start seen from outside, with real processes: a request waits, replicas come up, the reply says how long.

Only the interceptor runs at first; the test plays the autoscaler's part and starts the runner, API server and
proxy once it has seen the request waiting. Status and metrics are read from the interceptor's admin port.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.conftest import Stack, write_deployment
from tests.e2e.test_stack import chat, request_log_lines
from tiffin.contracts.frames import COLD_START_HEADER

CHAT = "/v1/chat/completions"
# Long enough that the cold request cannot have reached its wait deadline when the replicas start.
WAIT_TIMEOUT_S = 120


def admin_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.admin_port}"


async def status_of(session: aiohttp.ClientSession, stack: Stack, name: str) -> dict[str, Any]:
    async with session.get(f"{admin_url(stack)}/api/status/{name}") as resp:
        assert resp.status == 200, await resp.text()
        status: dict[str, Any] = await resp.json()
        return status


async def await_status(
    session: aiohttp.ClientSession,
    stack: Stack,
    name: str,
    holds: Callable[[dict[str, Any]], bool],
    what: str,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Poll the admin port until the deployment's status satisfies `holds` (bounded)."""
    deadline = time.monotonic() + timeout_s
    while not holds(status := await status_of(session, stack, name)):
        assert time.monotonic() < deadline, f"{name} never became {what}; last status: {status}"
        await asyncio.sleep(0.05)
    return status


def start_replicas(stack: Stack, name: str) -> None:
    _, stack.runner_port = stack.start_runner(name, f"{name}-runner-1")
    _, api_port = stack.start_api(name, f"{name}-api-1")
    stack.start_proxy(name, f"{name}-api-1", api_port)


async def test_a_cold_start_is_timed_at_the_edge_and_shown_in_status(stack_factory: Any, tmp_path: Path) -> None:
    stack: Stack = stack_factory([
        write_deployment(tmp_path, "sleepy", limits={"wait_timeout_s": WAIT_TIMEOUT_S}),
        write_deployment(tmp_path, "quiet"),
    ])  # fmt: skip
    stack.start_interceptor()
    async with aiohttp.ClientSession() as session:
        cold = asyncio.create_task(session.post(stack.url + CHAT, json=chat("sleepy", "wake up")))

        # No replica anywhere: the request waits, and status says the deployment is waking for it.
        waiting = await await_status(
            session, stack, "sleepy",
            lambda s: s["state"] == "waking" and s["queued"] == 1 and (s["oldest_waiting_s"] or 0) >= 0.5,
            "waking with one request waiting for half a second",
        )  # fmt: skip
        assert waiting["api"]["ready"] == 0 and waiting["runner"]["ready"] == 0
        assert not cold.done()
        observed_wait_ms = waiting["oldest_waiting_s"] * 1000

        start_replicas(stack, "sleepy")
        async with await asyncio.wait_for(cold, 90) as resp:
            assert resp.status == 200
            assert (await resp.json())["choices"][0]["message"]["content"] == "echo: wake up"
            cold_start_ms = int(resp.headers[COLD_START_HEADER])
            cold_request_id = resp.headers["X-Request-Id"]
        assert cold_start_ms >= observed_wait_ms

        await await_status(session, stack, "sleepy", lambda s: s["state"] == "warm", "warm")
        async with session.post(stack.url + CHAT, json=chat("sleepy", "again")) as resp:
            assert resp.status == 200
            assert COLD_START_HEADER not in resp.headers
            warm_request_id = resp.headers["X-Request-Id"]

        async with session.get(admin_url(stack) + "/api/status") as resp:
            assert resp.status == 200
            everything = await resp.json()
        async with session.get(admin_url(stack) + "/metrics") as resp:
            metrics_text = await resp.text()

    sleepy, quiet = everything["deployments"]
    assert (sleepy["name"], quiet["name"]) == ("sleepy", "quiet")
    assert sleepy["state"] == "warm"
    assert sleepy["api"]["ready"] == 1 and sleepy["runner"]["ready"] == 1
    assert sleepy["queued"] == 0
    # The request that woke the deployment recorded its wait as the deployment's last cold start.
    assert sleepy["last_cold_start_s"] == cold_start_ms / 1000
    assert sleepy["last_cold_start_at_ms"] is not None
    assert quiet["state"] == "idle" and quiet["queued"] == 0 and quiet["last_cold_start_s"] is None
    assert 'tiffin_cold_start_wait_seconds_count{deployment="sleepy"} 1.0' in metrics_text

    [cold_line] = request_log_lines(stack, cold_request_id)
    [warm_line] = request_log_lines(stack, warm_request_id)
    assert cold_line["cold_start_ms"] == cold_start_ms
    assert warm_line["cold_start_ms"] is None


async def test_status_of_an_unknown_deployment_is_an_openai_shaped_404(stack_factory: Any, tmp_path: Path) -> None:
    stack: Stack = stack_factory([write_deployment(tmp_path, "quiet")])
    stack.start_interceptor()
    async with aiohttp.ClientSession() as session, session.get(admin_url(stack) + "/api/status/nope") as resp:
        assert resp.status == 404
        error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and "nope" in error["message"]
