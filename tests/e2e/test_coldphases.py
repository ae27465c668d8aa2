"""A cold start from zero through the whole of `tiffin up` (scaler, autoscaler, replicas, echo runner), phase by
phase: the reply's header, `/metrics` and `tiffin status` tell the same record, with every phase in order.

Durations are not asserted (a shared machine makes them noisy): only that each phase was seen, and their order.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import aiohttp

from tests.e2e.conftest import processes_of, status, write_deployment
from tests.e2e.up import Up
from tests.procs import ROOT
from tiffin.contracts.coldstart import PHASE_LABELS, PHASES
from tiffin.contracts.frames import COLD_START_HEADER, COLD_START_PHASES_HEADER

# What the stack guarantees, as chains of phases that cannot be out of order: the scaler marks `activated` before
# it pushes, the autoscaler starts replicas on hearing it, a proxy registers its API server before it takes work,
# and a reply needs a runner. API server and runner start side by side, so api_ready and engine_ready (and a
# proxy's take and engine_ready) may come in either order.
CHAINS = [
    ("activated", "replica_started", "api_ready", "dispatched", "first_byte"),
    ("activated", "replica_started", "engine_ready", "first_byte"),
]


async def one_cold_request(up: Up) -> tuple[int, dict[str, str], str]:
    body = {"model": "phases", "messages": [{"role": "user", "content": "wake up"}]}
    connector = aiohttp.TCPConnector(ssl=up.ssl_context())
    timeout = aiohttp.ClientTimeout(total=180)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.post(up.url + "/v1/chat/completions", json=body) as resp,
    ):
        data = await resp.json()
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, data["choices"][0]["message"]["content"]


def urlopen_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text: str = resp.read().decode()
        return text


def tiffin_status(up: Up, *args: str) -> str:
    argv = [sys.executable, "-m", "tiffin", "status", "--admin", f"http://127.0.0.1:{up.admin_port}", *args]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    return result.stdout


def test_a_cold_start_from_zero_is_recorded_with_every_phase_in_order(tmp_path: Path) -> None:
    config = write_deployment(tmp_path, "phases", limits={"wait_timeout_s": 120, "upstream_timeout_s": 60},
                              scaling={"idle_period_s": 300})  # fmt: skip
    up = Up([config], tmp_path / "state")
    try:
        up.wait_for_line("ready: phases", timeout_s=120)
        assert processes_of(tmp_path, "phases") == 0  # at zero: nothing of it runs
        assert status(up)["phases"]["last_cold_start"] is None

        code, headers, text = asyncio.run(one_cold_request(up))
        assert (code, text) == (200, "echo: wake up")

        # The header: every phase as ms since arrival; first byte is the cold-start wait it also reports.
        pairs = [item.split("=") for item in headers[COLD_START_PHASES_HEADER].split(";")]
        from_header = {name: int(ms) for name, ms in pairs}
        assert list(from_header) == list(PHASES)
        for chain in CHAINS:
            times = [from_header[phase] for phase in chain]
            assert times == sorted(times), f"{chain} out of order: {from_header}"
        assert from_header["first_byte"] == int(headers[COLD_START_HEADER])

        # `tiffin status --json`: the same record.
        record = json.loads(tiffin_status(up, "--json"))["deployments"][0]["last_cold_start"]
        assert record["request_id"] == headers["x-request-id"] and record["outcome"] == "ok"
        assert {name: round(ms) for name, ms in record["phases"].items()} == from_header
        assert record["total_ms"] == from_header["first_byte"]

        # `tiffin status`: a line per deployment's last cold start, every phase named, with units.
        table = tiffin_status(up)
        [line] = [row for row in table.splitlines() if row.startswith("phases: last cold start")]
        for phase in PHASES:
            assert re.search(rf"{PHASE_LABELS[phase]} \+\d+\.\d+ s", line), line

        # `/metrics`: one finished cold start, its total and each phase.
        metrics = urlopen_text(f"http://127.0.0.1:{up.admin_port}/metrics")
        assert 'tiffin_cold_starts_total{deployment="phases",outcome="ok"} 1.0' in metrics
        assert 'tiffin_cold_start_seconds_count{deployment="phases"} 1.0' in metrics
        for phase in PHASES:
            assert f'tiffin_cold_start_phase_seconds_count{{deployment="phases",phase="{phase}"}} 1.0' in metrics
    finally:
        assert up.proc.stop(timeout_s=180) == 0
