"""Without a runner pool to fork from (not ready yet, or gone), a runner starts plainly: no request fails for it.

A real ManagedProcess and a RunnerPool whose socket has no pool behind it (the state after a crash: the file is
left, nothing accepts); the child is a real process.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from tests.runtime import until
from tiffin.local.pool import RunnerPool, enabled_by_env
from tiffin.local.processes import ManagedProcess, ProcessSpec


async def test_a_runner_whose_pool_is_gone_starts_plainly_and_says_so_once(tmp_path: Path) -> None:
    said: list[str] = []
    path = tmp_path / "pool.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound, never listening: connecting is refused, as after the pool crashed
    dead.close()
    pool = RunnerPool(path, {}, tmp_path, said.append)
    waits = "import signal; print('plain start', flush=True); signal.pause()"  # runs until stopped
    spec = ProcessSpec("runner", "", command=(sys.executable, "-c", waits), launcher=pool)
    first, second = ManagedProcess(spec, tmp_path, said.append), ManagedProcess(spec, tmp_path, said.append)
    for proc in (first, second):
        await proc.start()
    try:
        log = tmp_path / "runner.log"
        await until(lambda: log.exists() and "plain start" in log.read_text(), timeout_s=30, what="a plain start")
        assert first.running and second.running
        assert (pool.started, pool.fallbacks) == (0, 2)
        assert len([line for line in said if "runner pool unavailable" in line]) == 1  # once per outage
    finally:
        for proc in (first, second):
            await proc.stop()


def test_the_pool_can_be_turned_off_by_environment() -> None:
    assert enabled_by_env({}) is True
    assert enabled_by_env({"TIFFIN_RUNNER_POOL": "0"}) is False
    assert enabled_by_env({"TIFFIN_RUNNER_POOL": "off"}) is False
    assert enabled_by_env({"TIFFIN_RUNNER_POOL": "1"}) is True
