"""A runner killed (SIGKILL) while it serves a workload of streaming and non-streaming requests: whatever each
client saw is what the interceptor logged and counted for it. A clean answer is a 200; a reply broken after its
head is logged with the status it began with and `detail=stream_broken` (and counted in
`tiffin_streams_broken_total`), never as a clean 200; an error answer is logged with its own status, never 0 or 500.
Every request is accounted for, and a retry of each one that did not get its answer succeeds.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import aiohttp

from tests.e2e.conftest import Stack, write_deployment
from tests.faults.edge_support import Result, account, arrivals, request_lines, send, stack_of
from tiffin.common.redis_conn import connect
from tiffin.contracts import keys

STREAMS, PLAIN = 12, 12
DEADLINE_S = 120


async def test_a_runner_killed_mid_reply_is_logged_and_counted_as_each_client_saw_it(tmp_path: Path) -> None:
    config = write_deployment(tmp_path, "mortal", api={"concurrency": 32}, runner={"concurrency": 32},
                              limits={"max_queue": 100, "wait_timeout_s": 60, "upstream_timeout_s": 30})  # fmt: skip
    with stack_of(tmp_path, [config]) as stack:
        runner, stack.runner_port = stack.start_runner("mortal", "mortal-runner-1")
        runner.wait_http(f"http://127.0.0.1:{stack.runner_port}/health", timeout_s=60)
        _, api_port = stack.start_api("mortal", "mortal-api-1")
        stack.start_proxy("mortal", "mortal-api-1", api_port)
        interceptor = stack.start_interceptor(TIFFIN_REPLY_GAP_GRACE_S="5")
        results = await _kill_the_runner_under_load(stack)
        # A request's line is written as its handler ends, which can be just after its client read the end.
        deadline = time.monotonic() + 30
        while not {r.request_id for r in results} <= set(logged := request_lines(interceptor.log())):
            assert time.monotonic() < deadline, "a request was never logged"
            await asyncio.sleep(0.1)  # reading another process's log
        broken_total = await _broken_total(stack)

    for result in results:
        assert result.request_id is not None
        line = logged[result.request_id]
        if result.correct:
            assert (line["status"], line["detail"]) == (200, None), (result, line)
        elif result.status == 200:  # an error event, or a body cut short: broken after its head
            assert (line["status"], line["detail"]) == (200, "stream_broken"), (result, line)
        else:
            assert result.status != 500 and line["status"] == result.status, (result, line)
    broken = [r for r in results if r.status == 200 and not r.correct]
    assert broken_total == len(broken)
    assert any(r.stream for r in broken), "no stream was broken: the test did not test what it says"
    print(f"\nrunner killed: {sum(r.correct for r in results)} answered, {len(broken)} broken after the head, "
          f"{len(results) - len(broken) - sum(r.correct for r in results)} refused: "
          f"{sorted({(r.status, r.error) for r in results if not r.correct}, key=str)}")  # fmt: skip


async def _kill_the_runner_under_load(stack: Stack) -> list[Result]:
    words = " ".join(f"w{n}" for n in range(40))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as session:
        # Streams pace a word every 100 ms; plain requests wait 3 s at the runner before answering.
        tasks = [asyncio.create_task(send(session, stack.url, "mortal", f"s{i} {words}", True, delay_s=0.1))
                 for i in range(STREAMS)]  # fmt: skip
        tasks += [asyncio.create_task(send(session, stack.url, "mortal", f"p{i}", False, delay_s=3.0))
                  for i in range(PLAIN)]  # fmt: skip
        deadline = time.monotonic() + DEADLINE_S
        while sum((await arrivals(session, stack.runner_port)).values()) < STREAMS + PLAIN:
            assert time.monotonic() < deadline, "the runner never got the whole workload"
            await asyncio.sleep(0.1)  # observing another process
        # Kill it once every stream's head has gone out (its request is `started`), so they break mid-reply.
        while await _started(stack) < STREAMS:
            assert time.monotonic() < deadline, "the streams never started"
            await asyncio.sleep(0.05)  # observing another process
        # The runner and its engine die at once, as in a crash (the engine would otherwise get a SIGTERM on its
        # runner's death, from tiffin's parent-death signal, and let its streams finish).
        async with session.get(f"http://127.0.0.1:{stack.runner_port}/health") as resp:
            engine_pid = (await resp.json())["pid"]
        os.kill(engine_pid, signal.SIGKILL)
        stack.procs["mortal-runner-1"].kill()
        # `tiffin up` would restart it; this stack has no supervisor, so the test starts its successor.
        _, stack.runner_port = stack.start_runner("mortal", "mortal-runner-2")
        async with asyncio.timeout(DEADLINE_S):
            results: list[Result] = await asyncio.gather(*tasks)
        tags = [f"s{i} {words}" for i in range(STREAMS)] + [f"p{i}" for i in range(PLAIN)]
        failed = account(results, tags)
        async with asyncio.timeout(DEADLINE_S):
            retried = await asyncio.gather(*(send(session, stack.url, "mortal", r.tag, r.stream) for r in failed))
        assert all(r.correct for r in retried), [r for r in retried if not r.correct]
    return results


async def _started(stack: Stack) -> int:
    """Requests whose reply has begun (state `started`), from the stack's Redis."""
    redis = connect(stack.redis_url)
    try:
        states = [await redis.hget(key, "state") async for key in redis.scan_iter(match=keys.request("*"))]
    finally:
        await redis.aclose()
    return states.count(b"started")


async def _broken_total(stack: Stack) -> float:
    url = f"http://127.0.0.1:{stack.admin_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        text = await resp.text()
    return sum(float(m) for m in re.findall(r'^tiffin_streams_broken_total\{[^}]*deployment="mortal"[^}]*\} (\S+)$',
                                             text, re.M))  # fmt: skip
