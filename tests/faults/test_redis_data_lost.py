"""A Redis that comes back without its data (an external one restarted without persistence, here FLUSHALL):
the proxy re-creates its consumer group (XREADGROUP NOGROUP), replicas register again, the interceptor makes its
reply stream again, and the workload that follows is served, without any component exiting."""

from __future__ import annotations

from pathlib import Path

import redis as sync_redis

from tests.e2e.conftest import Stack, make_stack, wait_until
from tests.faults.sup_support import account, deployment, launch, retry_failed, session, settle
from tiffin.contracts import keys


async def test_a_redis_that_lost_its_data_is_used_again_once_components_notice(tmp_path: Path) -> None:
    stack: Stack = make_stack(tmp_path, [deployment(tmp_path)])
    try:
        await _lose_data_and_serve(stack, tmp_path)
    finally:
        stack.stop()


async def _lose_data_and_serve(stack: Stack, tmp_path: Path) -> None:
    runner, runner_port = stack.start_runner("chat", "chat-runner-1")
    runner.wait_http(f"http://127.0.0.1:{runner_port}/health", timeout_s=60)
    _, api_port = stack.start_api("chat", "chat-api-1")
    stack.start_interceptor()
    proxy = stack.start_proxy("chat", "chat-api-1", api_port)
    async with session() as http:
        account(await settle(launch(http, stack.url, "first", 6)), {"ok"})
        client = sync_redis.Redis.from_url(stack.redis_url)
        try:
            client.flushall()
            # The proxy notices at its next read; the runner at its next heartbeat.
            wait_until("the consumer group made again", lambda: bool(client.exists(keys.queue("chat"))), 30)
            wait_until("the runner registered again", lambda: bool(client.zcard(keys.replicas("chat", "runner"))), 30)
            # Until the interceptor's reply reader makes its stream again, proxies take its requests for orphans
            # (its interceptor gone) and withdraw them: a window of about a second, here waited out.
            wait_until("the reply stream made again", lambda: bool(client.keys(keys.reply("*"))), 30)
        finally:
            client.close()
        outcomes = await settle(launch(http, stack.url, "after", 8))
        account(outcomes, {"ok", "refused"})
        await retry_failed(http, stack.url, outcomes)
    assert all(proc.alive() for proc in stack.procs.values()), {n: p.alive() for n, p in stack.procs.items()}
    assert "redis_unavailable" in proxy.log()  # NOGROUP seen, and the group made again
