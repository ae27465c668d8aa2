"""An interceptor paused for 5 s (SIGSTOP, as a stalled VM or a debugger would) under a workload of streaming and
non-streaming requests: what it held and what arrived meanwhile are all answered correctly once when it resumes,
and run once at the runner. Before issue 9 this gave 500s: requests that arrive during the pause wait in the
kernel's accept backlog and all reach the interceptor in the instant it resumes, a burst that emptied its Redis
pool (512, `MaxConnectionsError`). With 600 of them, 64 got 500 then.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp

from tests.e2e.conftest import Stack, write_deployment
from tests.faults.edge_support import account, arrivals, send, stack_of

PAUSE_S = 5.0
BEFORE, DURING = 100, 600
DEADLINE_S = 120


async def test_an_interceptor_paused_for_5s_answers_everything_once_it_resumes(tmp_path: Path) -> None:
    config = write_deployment(tmp_path, "paused", api={"concurrency": 32}, runner={"concurrency": 32},
                              limits={"max_queue": 1000, "wait_timeout_s": 60, "upstream_timeout_s": 60})  # fmt: skip
    with stack_of(tmp_path, [config]) as stack:
        runner, stack.runner_port = stack.start_runner("paused", "paused-runner-1")
        runner.wait_http(f"http://127.0.0.1:{stack.runner_port}/health", timeout_s=60)
        _, api_port = stack.start_api("paused", "paused-api-1")
        stack.start_proxy("paused", "paused-api-1", api_port)
        interceptor = stack.start_interceptor(TIFFIN_MAX_CONNECTIONS_PER_CLIENT="1000")
        await _pause_under_load(stack, interceptor.popen.pid)


async def _pause_under_load(stack: Stack, pid: int) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as session:
        # Streams under way (a word every 50 ms) and plain requests, when the interceptor stops.
        before = [asyncio.create_task(send(session, stack.url, "paused", f"before-{i}", stream=i % 2 == 0,
                                           delay_s=0.05)) for i in range(BEFORE)]  # fmt: skip
        await asyncio.sleep(0.5)  # let the first ones get under way; any mix of states is fine
        os.kill(pid, signal.SIGSTOP)
        try:
            during = [asyncio.create_task(send(session, stack.url, "paused", f"during-{i}", stream=i % 2 == 0))
                      for i in range(DURING)]  # fmt: skip
            await asyncio.sleep(PAUSE_S)  # the fault's length, not a synchronisation
        finally:
            os.kill(pid, signal.SIGCONT)
        async with asyncio.timeout(DEADLINE_S):
            results = await asyncio.gather(*before, *during)
        tags = [f"before-{i}" for i in range(BEFORE)] + [f"during-{i}" for i in range(DURING)]
        failed = account(results, tags)
        assert not failed, f"{len(failed)} not answered correctly after the pause, e.g. {failed[:5]}"
        ran = await arrivals(session, stack.runner_port)
        assert {tag: ran[tag] for tag in tags} == dict.fromkeys(tags, 1), "a request ran twice or never"
