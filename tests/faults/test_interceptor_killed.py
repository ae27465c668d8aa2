"""SIGKILL of one of two interceptors under load: its clients lose their connections (nothing hangs), the
other interceptor answers all of its own correctly once, the dead one's requests leave the queue, and a retry
through the survivor succeeds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.e2e.conftest import write_deployment
from tests.faults.edge_support import INCOMPLETE, Result, account, arrivals, send, stack_of
from tests.procs import Proc
from tiffin.common.redis_conn import connect
from tiffin.contracts.queue import DeploymentQueue
from tiffin.local.ports import free_port

EACH = 12
DEADLINE_S = 120
# Short so the survivor finds the dead interceptor's requests quickly (its reply stream expires, then a sweep).
FAST_ORPHANS = {"TIFFIN_REPLY_TTL_S": "3", "TIFFIN_ORPHAN_SWEEP_S": "1"}


async def _send_or_lost(session: aiohttp.ClientSession, url: str, tag: str, stream: bool) -> Result | None:
    """The request's result, or None when its connection died with its interceptor."""
    try:
        return await send(session, url, "twin", tag, stream, delay_s=2.0)  # slow: under way when the kill comes
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
        return None


async def test_a_killed_interceptor_loses_only_its_own_clients(tmp_path: Path) -> None:
    config = write_deployment(tmp_path, "twin", api={"concurrency": 32}, runner={"concurrency": 32},
                              limits={"wait_timeout_s": 60, "upstream_timeout_s": 30})  # fmt: skip
    with stack_of(tmp_path, [config]) as stack:
        runner, stack.runner_port = stack.start_runner("twin", "twin-runner-1")
        runner.wait_http(f"http://127.0.0.1:{stack.runner_port}/health", timeout_s=60)
        _, api_port = stack.start_api("twin", "twin-api-1")
        stack.start_proxy("twin", "twin-api-1", api_port)
        doomed = stack.start_interceptor("interceptor-a", **FAST_ORPHANS)
        port, admin_port = free_port(), free_port()
        survivor = Proc.module("interceptor-b", "interceptor", stack.env(
            TIFFIN_PORT=str(port), TIFFIN_ADMIN_PORT=str(admin_port), **FAST_ORPHANS), stack.log_dir)  # fmt: skip
        stack.procs["interceptor-b"] = survivor
        survivor.wait_http(f"http://127.0.0.1:{admin_port}/readyz")
        other = f"http://127.0.0.1:{port}"

        timeout = aiohttp.ClientTimeout(total=DEADLINE_S)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
            on_a = [asyncio.create_task(_send_or_lost(session, stack.url, f"a-{i}", i % 2 == 0)) for i in range(EACH)]
            on_b = [asyncio.create_task(send(session, other, "twin", f"b-{i}", i % 2 == 0, delay_s=0.2))
                    for i in range(EACH)]  # fmt: skip
            # Kill it once some of its requests are at the runner (under way), whatever the rest are doing.
            async with asyncio.timeout(DEADLINE_S):
                while sum(n for tag, n in (await arrivals(session, stack.runner_port)).items() if tag[0] == "a") < 3:
                    await asyncio.sleep(0.05)  # observing another process
            doomed.kill()
            async with asyncio.timeout(DEADLINE_S):
                lost_or_done = await asyncio.gather(*on_a)
                from_b: list[Result] = await asyncio.gather(*on_b)

            # The survivor's clients: every one answered correctly, once, and run once.
            assert account(from_b, [f"b-{i}" for i in range(EACH)]) == []
            ran = await arrivals(session, stack.runner_port)
            assert all(ran[f"b-{i}"] == 1 for i in range(EACH))
            # The dead one's clients: answered before the kill, or their connection ended (nothing hung).
            lost = [f"a-{i}" for i, r in enumerate(lost_or_done) if r is None or not r.correct]
            assert all(r is None or r.correct or r.error == INCOMPLETE for r in lost_or_done), lost_or_done
            assert lost, "the kill came after every request of the doomed interceptor was answered"

            # What it had accepted leaves the queue (withdrawn by the survivor), so no replica is held for it.
            client = connect(stack.redis_url)
            queue = DeploymentQueue(client, "twin")
            try:
                async with asyncio.timeout(DEADLINE_S):
                    while await queue.depth() != (0, 0):
                        await asyncio.sleep(0.1)  # the survivor's sweep, in another process
            finally:
                await client.aclose()
            # Their clients retry through the survivor: served.
            async with asyncio.timeout(DEADLINE_S):
                retried = await asyncio.gather(*(send(session, other, "twin", tag, int(tag[2:]) % 2 == 0)
                                                 for tag in lost))  # fmt: skip
            assert all(r.correct for r in retried), retried
