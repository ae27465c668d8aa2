"""SIGKILL of `tiffin up` itself: nothing it started outlives it, and a new `tiffin up` on the same ports and
state folder starts at once and serves (the requests under way when it died end with it, never hang)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from tests.e2e.conftest import wait_until
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
from tiffin.local.redis_server import SERVER_FILE


async def test_killing_tiffin_up_leaves_no_process_and_a_new_one_starts_on_the_same_state(tmp_path: Path) -> None:
    config = deployment(tmp_path)
    state = tmp_path / "state"
    first = Up([config], state, args=["--plain-http"], name="up-1")
    second: Up | None = None
    try:
        first.wait_for_line("Ctrl-C stops", 180)
        children = pids_mentioning(str(config), str(state))
        # redis, scaler, interceptor, an API server with its proxy, a runner and its engine
        assert len(children) >= 7, children
        async with session() as http:
            url = f"http://127.0.0.1:{first.port}"
            tasks = launch(http, url, "before", 12, delay_s=0.2)
            await asyncio.sleep(1.0)  # under load, not a synchronisation: the kill lands wherever they are
            os.kill(first.proc.popen.pid, signal.SIGKILL)
            first.proc.popen.wait()
            outcomes = await settle(tasks)
        # What was under way dies with the processes: its client sees the connection end (or had its answer),
        # never a hang and never a 500.
        assert all(o.kind in ("ok", "refused", "stream_error") or o.status == 0 for o in outcomes), outcomes

        # At once, on the same ports and state folder: nothing of the first run may be in the way.
        ports = ["--port", str(first.port), "--admin-port", str(first.admin_port)]
        second = Up([config], state, args=["--plain-http", *ports], name="up-2")
        wait_until("every process of the killed tiffin up gone", lambda: not any(map(_alive, children)), 60)
        second.wait_for_line("Ctrl-C stops", 180)
        assert (state / "redis" / SERVER_FILE).exists()
        async with session() as http:
            url = f"http://127.0.0.1:{first.port}"
            after = await settle(launch(http, url, "after", 12))
            account(after, {"ok"})
            await retry_failed(http, url, outcomes)
    finally:
        for up in (first, second):
            if up is not None:
                up.proc.stop(60)
        kill_all(pids_mentioning(str(config), str(state)))
    assert not pids_mentioning(str(config), str(state))


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_closed_terminal_stops_tiffin_up_in_order(tmp_path: Path) -> None:
    config = deployment(tmp_path)
    state = tmp_path / "state"
    up = Up([config], state, args=["--plain-http"])
    try:
        up.wait_for_line("Ctrl-C stops", 180)
        os.kill(up.proc.popen.pid, signal.SIGHUP)  # what a closing terminal sends
        assert up.proc.popen.wait(120) == 0
        assert "tiffin: stopped" in up.proc.log()
        assert not pids_mentioning(str(config), str(state))
    finally:
        up.proc.stop(60)
        kill_all(pids_mentioning(str(config), str(state)))
