"""SIGTERM of a proxy whose requests outlast its drain timeout: each of its clients still gets exactly one answer.

A request whose reply had not started is handed back at once and served by the other replica; a stream whose
bytes had reached its client ends with the `replica_failed` error event, not a stall until the upstream timeout.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import redis

from tests.e2e import conftest as e2e
from tests.e2e.conftest import Stack, wait_until
from tests.faults.redeliver_support import (
    DEPLOYMENT,
    REQUEST_TIMEOUT_S,
    Result,
    account,
    held_by,
    runner_records,
    send,
    start_pair,
)
from tiffin.contracts import keys

stack_factory = e2e.stack_factory  # the e2e fixture, here without a conftest of this folder's own

_STREAMED = "drain-stream " + " ".join(f"w{n}" for n in range(10))
"""A stream of a dozen events, paced by `_CHUNK_S`: still under way long after its first event."""
_CHUNK_S = 2.0
_PLAIN_S = 20.0
"""The non-streamed request's runner time: it is still running when the drain gives up on it."""


async def test_a_proxy_stopped_past_its_drain_timeout_answers_each_client_once(
    stack_factory: Any, tmp_path: Path
) -> None:
    # Only echo-api-1's proxy is there at first, so it alone takes both requests; its drain timeout is short.
    pair = start_pair(stack_factory, tmp_path, proxies=("echo-api-1",), TIFFIN_DRAIN_TIMEOUT_S="1")
    proxy = pair.stack.procs[pair.proxy_name("echo-api-1")]
    async with aiohttp.ClientSession() as session:
        streamed, plain = Result(_STREAMED, stream=True), Result("drain-plain", stream=False)
        clients = [asyncio.create_task(send(session, pair.stack.url, streamed, _CHUNK_S)),
                   asyncio.create_task(send(session, pair.stack.url, plain, _PLAIN_S))]  # fmt: skip
        await asyncio.wait_for(streamed.first_event.wait(), REQUEST_TIMEOUT_S)  # reply bytes reached that client
        await _until_at_a_runner(session, list(pair.runner_ports.values()), plain.tag)
        held = await asyncio.to_thread(held_by, pair.stack, "echo-api-1")
        assert sorted(held) == [(plain.tag, False), (streamed.tag, True)], held
        pair.start_proxy("echo-api-2", registered=2)

        proxy.popen.send_signal(signal.SIGTERM)
        results = list(await asyncio.gather(*clients))
        assert await asyncio.to_thread(proxy.popen.wait, REQUEST_TIMEOUT_S) == 0

        # No reply byte had gone out: handed back, and answered by the other replica as if nothing happened.
        assert plain.correct, plain
        # Bytes had reached the client: its stream ends with the error event of a failed replica, at once (the
        # interceptor's own ending, after the upstream timeout, would say `upstream_timeout`).
        assert streamed.status == 200 and not streamed.done, streamed
        assert streamed.error is not None and streamed.error.get("code") == "replica_failed", streamed
        assert streamed.text and streamed.expected.startswith(streamed.text), streamed
        await account(pair, session, results, list(pair.runner_ports.values()))

    wait_until("nothing left pending in the queue", lambda: _pending(pair.stack) == 0, REQUEST_TIMEOUT_S)
    settled = _events(proxy.log(), "drain_gave_up")
    assert sorted(line["settled"] for line in settled) == ["failed_mid_reply", "released"], settled
    released = next(line["request_id"] for line in settled if line["settled"] == "released")
    forwarded = _events(pair.stack.procs[pair.proxy_name("echo-api-2")].log(), "forwarded")
    assert released in {line["request_id"] for line in forwarded}, forwarded  # the other replica answered it


async def _until_at_a_runner(session: aiohttp.ClientSession, ports: list[int], tag: str) -> None:
    """Wait until a runner has received the request tagged `tag` (and so is working on it)."""
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        while tag not in await runner_records(session, ports, "arrivals"):
            await asyncio.sleep(0.05)  # observing another process: no event to await


def _events(log: str, event: str) -> list[dict[str, Any]]:
    """The JSON lines of a component's log that record `event`."""
    lines = (json.loads(line) for line in log.splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == event]


def _pending(stack: Stack) -> int:
    """Entries of the deployment's queue read by a proxy and not yet acknowledged."""
    client = redis.Redis.from_url(stack.redis_url)
    try:
        summary: Any = client.xpending(keys.queue(DEPLOYMENT), keys.GROUP)
        return int(summary["pending"])
    finally:
        client.close()
