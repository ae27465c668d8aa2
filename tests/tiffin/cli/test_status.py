"""`tiffin status` against a real admin listener and Redis: the page's states and counts, with units."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from redis.asyncio import Redis

from tests.interceptor.conftest import running_edge
from tests.interceptor.test_dashboard_api import deployments, warm_up
from tiffin.cli.status import duration, show_status
from tiffin.contracts import keys
from tiffin.contracts.runnerpool import PoolReport, write_report
from tiffin.contracts.status import write_cluster_ready


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (0.25, "250ms"), (12.54, "12.5s"), (245, "4m 05s"), (7380, "2h 03m")],
)
def test_durations_carry_their_unit(seconds: float | None, shown: str) -> None:
    assert duration(seconds) == shown


async def test_status_shows_what_the_dashboard_shows(redis: Redis, capsys: pytest.CaptureFixture[str]) -> None:
    await warm_up(redis)
    # `small`'s last request finished 4 min 10 s ago; `big` has one request waiting.
    await redis.set(keys.activity("small"), int((time.time() - 250) * 1000))
    # Nothing in flight or at a runner, so the time since the last request shows.
    await redis.delete(keys.queue("small"), keys.runner_load("small"))
    async with running_edge(redis, deployments()) as edge:
        capsys.readouterr()  # the edge's start-up log lines
        assert await asyncio.to_thread(show_status, edge.admin, False) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["DEPLOYMENT", "STATE", "API", "RUNNER", "QUEUED", "IN", "FLIGHT", "OLDEST", "WAIT",
                                "LAST", "REQUEST", "LAST", "COLD", "START"]  # fmt: skip
    small = lines[1].split()
    assert small[:6] == ["small", "warm", "1/1", "1/1", "0", "0"]
    assert small[6] == "-"  # nothing waits
    assert " ".join(small[7:10]) in {"4m 10s ago", "4m 11s ago", "4m 12s ago"}
    assert small[10] == "8.0s"  # the newest cold start's total
    big = lines[2].split()
    assert big[:6] == ["big", "waking", "0/-", "1/1", "1", "0"]
    assert big[6].endswith(("ms", "s"))  # the waiting request's age, with its unit
    assert big[-1] == "-"  # never had a cold start
    assert lines[4] == "small: last cold start 8.0 s: activated +0.03 s"  # the newest, with its phases
    assert lines[-1] == ("2 deployments: 0 idle, 1 waking, 1 warm; 1 API server and 2 runners ready (1 on GPUs); "
                         "1 queued, 0 in flight")  # fmt: skip


async def test_status_json_is_the_dashboard_overview(redis: Redis, capsys: pytest.CaptureFixture[str]) -> None:
    async with running_edge(redis, deployments()) as edge:
        capsys.readouterr()
        assert await asyncio.to_thread(show_status, edge.admin, True) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in data["deployments"]] == ["small", "big"]
    assert data["totals"]["idle"] == 2 and data["totals"]["deployments"] == 2


async def test_status_shows_the_runner_pool_s_memory(redis: Redis, capsys: pytest.CaptureFixture[str]) -> None:
    await warm_up(redis)
    report = PoolReport("ready", rss_bytes=600 * 2**20, pss_bytes=450 * 2**20, pid=1234, runners_started=2,
                        plain_fallbacks=1, restarts=0, updated_ms=int(time.time() * 1000))  # fmt: skip
    await write_report(redis, report)
    async with running_edge(redis, deployments()) as edge:
        capsys.readouterr()
        assert await asyncio.to_thread(show_status, edge.admin, False) == 0
        assert await asyncio.to_thread(show_status, edge.admin, True) == 0
    out = capsys.readouterr().out
    table, as_json = out[: out.index("{")], out[out.index("{") :]
    shown = "runner pool: ready, 600 MiB resident (450 MiB proportional), 2 runner(s) started from it, 1 plainly"
    assert shown in table
    assert json.loads(as_json)["runner_pool"]["rss_bytes"] == 600 * 2**20


async def test_on_kubernetes_the_table_shows_the_clusters_ready_pods(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    await warm_up(redis)
    # The controller's copy of the cluster's counts: two API pods ready while one has registered so far.
    await write_cluster_ready(redis, "small", "api", 2)
    async with running_edge(redis, deployments()) as edge:
        capsys.readouterr()
        assert await asyncio.to_thread(show_status, edge.admin, False) == 0
    lines = capsys.readouterr().out.splitlines()
    small = lines[1].split()
    assert small[:5] == ["small", "warm", "1/1", "k8s:2", "1/1"]  # the runner's count: none reported
    assert "(k8s: pods Kubernetes reports ready; ready above counts replicas registered with tiffin)" in lines


async def test_off_kubernetes_the_table_has_no_cluster_counts(redis: Redis, capsys: pytest.CaptureFixture[str]) -> None:
    await warm_up(redis)
    async with running_edge(redis, deployments()) as edge:
        capsys.readouterr()
        assert await asyncio.to_thread(show_status, edge.admin, False) == 0
    out = capsys.readouterr().out
    assert "k8s" not in out
