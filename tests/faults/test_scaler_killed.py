"""The scaler away for a while under `tiffin up`: requests for a deployment at zero wait in the queue (none is
refused or lost), and are all served once the scaler is back (tiffin restarts it)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

from tests.e2e.conftest import status, wait_until
from tests.e2e.up import Up
from tests.faults.sup_support import account, deployment, kill_all, launch, pids_mentioning, session, settle

COUNT = 12


def scaler_pid(config: Path, state: Path) -> int:
    for pid in pids_mentioning(str(config), str(state)):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"scaler" in argv and b"-m" in argv:
            return pid
    raise AssertionError("no scaler process")


async def test_requests_wait_while_the_scaler_is_away_and_are_served_when_it_returns(tmp_path: Path) -> None:
    config = deployment(tmp_path, warm=False)
    state = tmp_path / "state"
    up = Up([config], state, args=["--plain-http"])
    try:
        up.wait_for_line("Ctrl-C stops", 180)
        url = f"http://127.0.0.1:{up.port}"
        scaler = scaler_pid(config, state)
        os.kill(scaler, signal.SIGSTOP)  # away: it answers nothing, and tiffin up cannot tell yet
        async with session() as http:
            tasks = launch(http, url, "queued", COUNT)
            await asyncio.to_thread(wait_until, "every request queued", lambda: status(up)["chat"]["queued"] == COUNT,
                                    60)  # fmt: skip
            assert not any(t.done() for t in tasks)  # waiting, not refused: nothing can serve them yet
            os.kill(scaler, signal.SIGKILL)  # now dead: tiffin restarts it, and it wakes the deployment
            outcomes = await settle(tasks)
        account(outcomes, {"ok"})
        assert len(re.findall(r"scaler exited with code", up.proc.log())) == 1
    finally:
        up.proc.stop(90)
        kill_all(pids_mentioning(str(config), str(state)))
