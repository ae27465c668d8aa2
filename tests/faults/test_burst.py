"""A burst of 1,000 concurrent requests at a deployment at zero (queue bound 2,000): every one is accepted while
nothing runs, then answered correctly exactly once, and run once at the runner; the interceptor's peak memory is
printed. Before issue 9, past 512 at once the interceptor's Redis pool raised and hundreds got 500.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp

from tests.e2e.conftest import Stack, write_deployment
from tests.faults.edge_support import Result, account, arrivals, peak_rss_mib, send, stack_of

BURST = 1000
# Generous: the whole burst takes seconds on an idle machine, this bounds it on a busy 2-core one.
DEADLINE_S = 150
PEAK_RSS_BOUND_MIB = 1024


async def test_a_burst_of_1000_at_zero_is_answered_once_each(tmp_path: Path) -> None:
    config = write_deployment(
        tmp_path, "burst",
        api={"concurrency": 64}, runner={"concurrency": 64},
        limits={"max_queue": 2 * BURST, "wait_timeout_s": DEADLINE_S, "upstream_timeout_s": 60},
    )  # fmt: skip
    with stack_of(tmp_path, [config]) as stack:
        await _burst(stack)


async def _burst(stack: Stack) -> None:
    # One test client stands for many: its connections are not capped per address here.
    interceptor = stack.start_interceptor(TIFFIN_MAX_CONNECTIONS_PER_CLIENT=str(4 * BURST))
    tags = [f"burst-{i}" for i in range(BURST)]

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S + 30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(send(session, stack.url, "burst", tag, stream=i % 2 == 0))
                 for i, tag in enumerate(tags)]  # fmt: skip

        # At zero, every request of the burst is accepted and waits: none is refused, none fails.
        deadline = time.monotonic() + DEADLINE_S
        while (queued := await _queued(session, stack)) < BURST:
            ended = [t.result() for t in tasks if t.done()]
            assert not ended, f"answered while nothing runs: {ended[:5]}"
            assert time.monotonic() < deadline, f"only {queued} of {BURST} accepted"
            await asyncio.sleep(0.2)  # observing another process

        _, stack.runner_port = stack.start_runner("burst", "burst-runner-1")
        _, api_port = stack.start_api("burst", "burst-api-1")
        stack.start_proxy("burst", "burst-api-1", api_port)
        async with asyncio.timeout(DEADLINE_S):
            results: list[Result] = await asyncio.gather(*tasks)

        failed = account(results, tags)
        assert not failed, f"{len(failed)} of {BURST} not answered correctly, e.g. {failed[:5]}"
        ran = await arrivals(session, stack.runner_port)
        assert {tag: ran[tag] for tag in tags} == dict.fromkeys(tags, 1), "a request ran twice or never"

    lines = [json.loads(line) for line in interceptor.log().splitlines() if line.startswith("{")]
    statuses = [line["status"] for line in lines if line.get("event") == "request"]
    assert statuses == [200] * BURST
    peak = peak_rss_mib(interceptor.popen.pid)
    print(f"\ninterceptor peak RSS over a burst of {BURST}: {peak:.0f} MiB")
    assert peak < PEAK_RSS_BOUND_MIB


async def _queued(session: aiohttp.ClientSession, stack: Stack) -> int:
    async with session.get(f"http://127.0.0.1:{stack.admin_port}/api/status/burst") as resp:
        status = await resp.json()
        assert resp.status == 200, f"status unreadable during the burst: {status}"
    return int(status["queued"]) + int(status["in_flight"])
