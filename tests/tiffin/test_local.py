"""The local supervisor: a crashing process is replaced, and the user is shown why it died."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tiffin.local import ProcessSpec, Supervisor, tail


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
