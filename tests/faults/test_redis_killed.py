"""SIGKILL of the embedded Redis under `tiffin up` with a workload running: tiffin restarts it (same port,
password and append-only file), every component rides out the outage without crash-looping, what was queued
before the kill is served after it, requests sent during the outage get a clear answer (never a 500), and
the workload afterwards is all answered.

The answers during the outage are the interceptor's (503 with Retry-After from branch issue9-edge9); before that
lands, the interceptor answers them 500 and this test says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path

from tests.e2e.up import Up
from tests.faults.sup_support import (
    account,
    deployment,
    kill_all,
    launch,
    pids_mentioning,
    retry_failed,
    session,
    settle,
)

BEFORE = 24
DURING = 10


def restarts(log: str) -> dict[str, int]:
    """How often `tiffin up` said each child exited (and restarted it)."""
    counts: dict[str, int] = {}
    for name in re.findall(r"tiffin: (\S+) exited with code", log):
        counts[name] = counts.get(name, 0) + 1
    return counts


async def test_redis_killed_under_load_is_restarted_and_nothing_is_lost(tmp_path: Path) -> None:
    config = deployment(tmp_path)
    state = tmp_path / "state"
    up = Up([config], state, args=["--plain-http"])
    try:
        up.wait_for_line("Ctrl-C stops", 180)
        url = f"http://127.0.0.1:{up.port}"
        server = json.loads((state / "redis" / "server.json").read_text())
        async with session() as http:
            # One API server takes 4 at a time and each stream takes a while: most of these wait in the queue.
            before = launch(http, url, "before", BEFORE, delay_s=0.3)
            await asyncio.sleep(1.0)  # under load, not a synchronisation: the kill lands wherever they are
            os.kill(server["pid"], signal.SIGKILL)
            during = launch(http, url, "during", DURING)
            await asyncio.to_thread(up.wait_for_line, "redis is back", 120)
            outcomes = await settle(before) + await settle(during)
            kinds = account(outcomes, {"ok", "refused", "stream_error"})
            # Queued before the kill and kept by the append-only file: served after. Only those a proxy held
            # (at most api.concurrency) may have been cut by the outage.
            assert sum(o.kind == "ok" for o in outcomes if o.tag.startswith("before")) >= BEFORE - 4, kinds
            await retry_failed(http, url, outcomes)
            after = await settle(launch(http, url, "after", 16))
            account(after, {"ok"})
        again = json.loads((state / "redis" / "server.json").read_text())
        assert again["port"] == server["port"] and again["pid"] != server["pid"]
        log = up.proc.log()
        # Redis restarted once; no component crash-looped (none exited at all).
        assert restarts(log) == {"redis": 1}, restarts(log)
    finally:
        up.proc.stop(90)
        kill_all(pids_mentioning(str(config), str(state)))
