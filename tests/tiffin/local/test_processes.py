"""The local supervisor: a crashing process is replaced, and the user is shown why it died."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tiffin.local import processes as local
from tiffin.local.processes import ManagedProcess, ProcessSpec, Supervisor, tail


async def test_a_crashed_process_is_restarted_and_its_last_words_are_shown(tmp_path: Path) -> None:
    said: list[str] = []
    restarted = asyncio.Event()

    def say(message: str) -> None:
        said.append(message)
        if "crashy| boom" in message:
            restarted.set()

    supervisor = Supervisor(tmp_path, say)
    spec = ProcessSpec("crashy", "tests.tiffin.crash_then_wait", env={"CRASH_MARK": str(tmp_path / "crashed")})
    [proc] = await supervisor.start_stage([spec])
    await asyncio.wait_for(restarted.wait(), 30)
    assert any("crashy exited with code 3; restarting" in m for m in said)
    # The replacement runs (the module crashes only the first time, then waits to be stopped).
    while not (tmp_path / "crashed").exists() or proc.restarts != 1 or not proc.running:
        await asyncio.sleep(0.05)
    await supervisor.stop_all()
    assert not proc.running


def test_tail_returns_the_last_non_empty_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("a\n\nb\nc\n\n")
    assert tail(log, 2) == ["b", "c"]
    assert tail(tmp_path / "missing.log", 2) == []


async def _restart_messages(tmp_path: Path, count: int) -> list[str]:
    """The first `count` 'restarting in' messages of a program that always exits at once."""
    said: list[str] = []
    enough = asyncio.Event()

    def say(message: str) -> None:
        if "restarting in" in message:
            said.append(message)
            if len(said) >= count:
                enough.set()

    always = ProcessSpec("always", "", command=(sys.executable, "-c", "raise SystemExit(3)"))
    proc = ManagedProcess(always, tmp_path, say)
    await proc.start()
    try:
        await asyncio.wait_for(enough.wait(), 60)
    finally:
        await proc.stop()
    return said[:count]


async def test_a_crash_loop_backs_off_more_each_time(tmp_path: Path) -> None:
    said = await _restart_messages(tmp_path, 2)
    assert [m.split("restarting in ")[1].split(" ")[0] for m in said] == ["1s", "2s"]


async def test_a_crash_after_a_healthy_run_restarts_after_the_first_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "_STABLE_S", 0.0)  # every run counts as a long healthy one
    said = await _restart_messages(tmp_path, 3)
    assert [m.split("restarting in ")[1].split(" ")[0] for m in said] == ["1s", "1s", "1s"]
