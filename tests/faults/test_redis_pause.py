"""Redis paused (SIGSTOP: a slow disk, a long fork, a stalled VM) under a workload of streaming and non-streaming
requests. Shorter than TIFFIN_REDIS_TIMEOUT_S, nobody notices but for the wait; longer, a request the edge could
not accept gets 503 with Retry-After (never 500), and everything accepted is answered once; a retry succeeds.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.conftest import Stack, write_deployment
from tests.faults.edge_support import Result, account, arrivals, send, stack_of

BEFORE, DURING = 60, 60
DEADLINE_S = 120


# 8 s is past every Redis timeout (the interceptor's TIFFIN_REDIS_TIMEOUT_S, the proxies' socket timeouts):
# new requests are refused cleanly, proxies ride out the stall (an XREADGROUP whose reply was lost is found
# again by the proxy's own-orphans pass), and a chunk whose XADD was retried is relayed once.
@pytest.mark.parametrize("pause_s", [2.0, 8.0])
async def test_a_paused_redis_costs_a_wait_or_a_clean_503_never_a_wrong_answer(tmp_path: Path, pause_s: float) -> None:
    config = write_deployment(tmp_path, "steady", api={"concurrency": 32}, runner={"concurrency": 32},
                              limits={"max_queue": 1000, "wait_timeout_s": 60, "upstream_timeout_s": 20})  # fmt: skip
    with stack_of(tmp_path, [config]) as stack:
        runner, stack.runner_port = stack.start_runner("steady", "steady-runner-1")
        runner.wait_http(f"http://127.0.0.1:{stack.runner_port}/health", timeout_s=60)
        _, api_port = stack.start_api("steady", "steady-api-1")
        stack.start_proxy("steady", "steady-api-1", api_port)
        stack.start_interceptor(TIFFIN_MAX_CONNECTIONS_PER_CLIENT="1000", TIFFIN_REPLY_GAP_GRACE_S="5")
        await _pause_under_load(stack, pause_s, api_port)


async def _pause_under_load(stack: Stack, pause_s: float, api_port: int) -> None:
    assert stack.redis.process is not None
    pid = stack.redis.process.pid
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as session:
        before = [asyncio.create_task(send(session, stack.url, "steady", f"before-{i}", stream=i % 2 == 0,
                                           delay_s=0.05)) for i in range(BEFORE)]  # fmt: skip
        await asyncio.sleep(0.5)  # let the first ones get under way; any mix of states is fine
        os.kill(pid, signal.SIGSTOP)
        try:
            during = [asyncio.create_task(send(session, stack.url, "steady", f"during-{i}", stream=i % 2 == 0))
                      for i in range(DURING)]  # fmt: skip
            await asyncio.sleep(pause_s)  # the fault's length, not a synchronisation
        finally:
            os.kill(pid, signal.SIGCONT)
        supervisor = asyncio.create_task(_restart_the_proxy_if_it_exits(stack, api_port))
        async with asyncio.timeout(DEADLINE_S):
            results: list[Result] = await asyncio.gather(*before, *during)
        tags = [f"before-{i}" for i in range(BEFORE)] + [f"during-{i}" for i in range(DURING)]
        failed = account(results, tags)
        print(f"\nRedis paused {pause_s:g}s: {len(failed)} of {len(tags)} not answered: "
              f"{sorted({(r.status, r.error) for r in failed}, key=str)}")  # fmt: skip
        for result in failed:
            # Refused: its enqueue could not reach Redis within TIFFIN_REDIS_TIMEOUT_S.
            refused = result.status == 503 and result.error == "backend_unavailable" and result.retry_after
            # A reply already under way whose proxy gave up on Redis: an error event (SSE) or a cut body.
            broken = result.status == 200 and result.error is not None and result.tag.startswith("before")
            assert refused or broken, f"neither a clean refusal nor a reply under way ended by an error: {result}"
        ran = await arrivals(session, stack.runner_port)
        answered = [r.tag for r in results if r.correct]
        assert all(ran[tag] == 1 for tag in answered), "an answered request ran twice"
        refused = [r.tag for r in failed if r.status == 503]
        print(f"refused {len(refused)}, of which ran at the runner: {[t for t in refused if ran[t]]}")
        assert not any(ran[tag] for tag in refused), "a refused request ran anyway"
        async with asyncio.timeout(DEADLINE_S):
            retried = await asyncio.gather(*(send(session, stack.url, "steady", f"{r.tag}-retry", r.stream)
                                             for r in failed))  # fmt: skip
        supervisor.cancel()
        assert all(r.correct for r in retried), retried
        if pause_s < 5:
            assert not failed, "a pause shorter than TIFFIN_REDIS_TIMEOUT_S must cost only a wait"


async def _restart_the_proxy_if_it_exits(stack: Stack, api_port: int) -> None:
    """A proxy whose Redis stalls past its timeouts exits to be restarted (with a fresh consumer name), as
    `tiffin up` does; this stack has no supervisor, so the test plays it."""
    while stack.procs["steady-api-1-proxy"].alive():
        await asyncio.sleep(0.2)  # observing another process
    stack.start_proxy("steady", "steady-api-1-again", api_port)
