"""The admin port's deployment status: every deployment in config order, one by name, and Redis outages."""

from __future__ import annotations

import aiohttp
from redis.asyncio import Redis

from interceptor.app import admin_app
from interceptor.relay import Relay
from interceptor.replies import ReplyReader
from interceptor.routing import Router
from tests.interceptor.conftest import deployment, running_edge, serving
from tiffin.common.redis_conn import connect
from tiffin.contracts import keys
from tiffin.contracts.frames import Envelope
from tiffin.contracts.queue import DeploymentQueue, now_ms
from tiffin.local.ports import free_port


async def test_status_lists_every_deployment_in_config_order(redis: Redis) -> None:
    names = ["zeta", "alpha", "mid"]
    async with running_edge(redis, [deployment(n) for n in names]) as edge, aiohttp.ClientSession() as session:
        before = now_ms()
        async with session.get(edge.admin + "/api/status") as resp:
            assert resp.status == 200
            status = await resp.json()
    assert [d["name"] for d in status["deployments"]] == names
    assert all(d["state"] == "idle" and d["queued"] == 0 for d in status["deployments"])
    assert status["at_ms"] >= before


async def test_status_of_one_deployment_shows_a_waiting_request(redis: Redis) -> None:
    async with running_edge(redis, [deployment("one"), deployment("two")]) as edge:
        envelope = Envelope(request_id="r1", reply_to=keys.reply("nobody"), path="/v1/completions", body=b"{}")
        admission = await DeploymentQueue(redis, "one").admit(envelope, max_waiting=10, ttl_s=60)
        assert admission.woke
        async with aiohttp.ClientSession() as session, session.get(edge.admin + "/api/status/one") as resp:
            assert resp.status == 200
            status = await resp.json()
    assert status["name"] == "one"
    assert status["state"] == "waking"
    assert status["queued"] == 1
    assert status["api"]["ready"] == 0 and status["runner"]["ready"] == 0
    assert status["oldest_waiting_s"] is not None and status["oldest_waiting_s"] >= 0


async def test_unknown_deployment_is_an_openai_shaped_404(redis: Redis) -> None:
    async with (
        running_edge(redis, [deployment("one")]) as edge,
        aiohttp.ClientSession() as session,
        session.get(edge.admin + "/api/status/nope") as resp,
    ):
        assert resp.status == 404
        error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "deployment_not_found" and "nope" in error["message"]


async def test_unreachable_redis_answers_503_with_a_clear_error() -> None:
    # Nothing listens on this port: every Redis call is refused.
    unreachable = connect(f"redis://127.0.0.1:{free_port()}/0")
    deployments = [deployment("one")]
    relay = Relay(unreachable, Router(deployments), ReplyReader(unreachable, "edge-test"), reply_gap_grace_s=5.0)
    try:
        async with serving(admin_app(relay, unreachable)) as admin, aiohttp.ClientSession() as session:
            for path in ("/api/status", "/api/status/one"):
                async with session.get(admin + path) as resp:
                    assert resp.status == 503
                    error = (await resp.json())["error"]
                    assert error["code"] == "redis_unavailable"
                    assert "redis is unreachable" in error["message"]
    finally:
        await unreachable.aclose()


async def test_the_admin_listener_names_no_server_version(redis: Redis) -> None:
    async with (
        running_edge(redis, [deployment("smollm2")]) as edge,
        aiohttp.ClientSession() as http,
        http.get(edge.admin + "/healthz") as resp,
    ):
        assert resp.headers["Server"] == "tiffin"


async def test_status_shows_the_runner_pool_tiffin_up_reports_and_tiffin_status_renders_it(redis: Redis) -> None:
    from tiffin.cli.status import render
    from tiffin.contracts.runnerpool import PoolReport, write_report

    async with running_edge(redis, [deployment("one")]) as edge, aiohttp.ClientSession() as session:
        async with session.get(edge.admin + "/api/status") as resp:
            assert (await resp.json())["runner_pool"] is None  # no pool reports: none shown
        report = PoolReport("ready", 600 * 2**20, 400 * 2**20, 1234, 3, 1, 0, now_ms())
        await write_report(redis, report)
        async with session.get(edge.admin + "/api/status") as resp:
            status = await resp.json()
    assert status["runner_pool"]["rss_bytes"] == 600 * 2**20 and status["runner_pool"]["state"] == "ready"
    assert "runner pool: ready, 600 MiB resident (400 MiB proportional), 3 runner(s) started from it, 1 plainly" in (
        render(status)
    )
