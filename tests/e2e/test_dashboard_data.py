"""The dashboard's data from real processes: the interceptor process writes the request history on its own, and
its admin port serves it, the Redis-read gauges and `tiffin status` consistently."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Stack, write_deployment
from tests.e2e.test_coldstart import CHAT, admin_url, start_replicas
from tests.e2e.test_stack import chat
from tests.procs import ROOT


async def await_detail(
    session: aiohttp.ClientSession, stack: Stack, holds: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """Poll GET /api/dashboard/shown until `holds` (bounded): other processes write what it reads."""
    deadline = time.monotonic() + 60
    while True:
        async with session.get(admin_url(stack) + "/api/dashboard/shown") as resp:
            assert resp.status == 200, await resp.text()
            data: dict[str, Any] = await resp.json()
        if holds(data):
            return data
        assert time.monotonic() < deadline, f"never {what}; last: {data['deployment']}"
        await asyncio.sleep(0.1)


async def test_the_interceptor_process_records_history_and_serves_it(stack_factory: Any, tmp_path: Path) -> None:
    stack: Stack = stack_factory([write_deployment(tmp_path, "shown"), write_deployment(tmp_path, "resting")])
    stack.start_interceptor(TIFFIN_HISTORY_FLUSH_S="0.2")
    start_replicas(stack, "shown")
    async with aiohttp.ClientSession() as session:
        await await_detail(session, stack, lambda d: d["deployment"]["state"] == "warm", "warm")
        for i in range(3):
            async with session.post(stack.url + CHAT, json=chat("shown", f"hello {i}")) as resp:
                assert resp.status == 200

        # Flushed by the interceptor's own history task: no test code writes the history.
        def served(d: dict[str, Any]) -> bool:
            return any(d["series"]["upstream_p50_s"][-3:]) and sum(filter(None, d["series"]["requests_per_s"])) > 0

        data = await await_detail(session, stack, served, "with its requests in the history")
        async with session.get(admin_url(stack) + "/api/dashboard") as resp:
            overview = await resp.json()
        async with session.get(admin_url(stack) + "/metrics") as resp:
            metrics = await resp.text()

    assert [r["id"] for r in data["replicas"]["api"]] == ["shown-api-1"]
    assert [r["id"] for r in data["replicas"]["runner"]] == ["shown-runner-1"]
    assert data["replicas"]["runner"][0]["url"].startswith("http://")
    assert all(e is None or e == 0 for e in data["series"]["errors_per_s"])
    assert not any(data["series"]["requests_per_s"][:-6])  # nothing recorded before this minute
    totals = overview["totals"]
    assert (totals["warm"], totals["idle"], totals["api_ready"], totals["runner_ready"]) == (1, 1, 1, 1)

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics) for s in family.samples}  # fmt: skip
    assert samples[("tiffin_replicas_ready", (("component", "runner"), ("deployment", "shown")))] == 1
    assert samples[("tiffin_deployment_state", (("deployment", "resting"), ("state", "idle")))] == 1
    assert samples[("tiffin_upstream_seconds_count", (("deployment", "shown"),))] == 3

    command = [sys.executable, "-m", "tiffin", "status", "--admin", admin_url(stack)]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    table = done.stdout
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:3]}
    assert rows["shown"][:6] == ["shown", "warm", "1/-", "1/-", "0", "0"]  # no scaling writer runs here
    assert rows["resting"][:2] == ["resting", "idle"]
    assert "1 waking" not in table and "1 idle, 0 waking, 1 warm" in table
