"""Children's logs stay within their size bound: rotated, the newest output always in the current file."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tiffin.local.logfiles import LogPolicy, RotatingLog
from tiffin.local.processes import ProcessSpec, Supervisor


def test_a_full_log_moves_aside_and_only_the_configured_backups_are_kept(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "x.log", LogPolicy(max_bytes=4096, backups=2))
    for n in range(40):
        log.write(f"{n:04d}".encode() + b"." * 1020)
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["x.log", "x.log.1", "x.log.2"]
    assert all((tmp_path / f).stat().st_size <= 4096 for f in files)
    # Oldest output went first; the newest write is in the current file.
    assert (tmp_path / "x.log").read_bytes().endswith(b"0039" + b"." * 1020)
    assert (tmp_path / "x.log.2").read_bytes() < (tmp_path / "x.log.1").read_bytes()


def test_no_backups_means_the_log_starts_over(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "x.log", LogPolicy(max_bytes=4096, backups=0))
    for _ in range(10):
        log.write(b"." * 1024)
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["x.log"]
    assert (tmp_path / "x.log").stat().st_size <= 4096


def test_an_existing_log_is_appended_to_and_counts_towards_the_bound(tmp_path: Path) -> None:
    (tmp_path / "x.log").write_bytes(b"old\n" * 1024)  # 4 KiB already there from an earlier run
    log = RotatingLog(tmp_path / "x.log", LogPolicy(max_bytes=4096, backups=1))
    log.write(b"new\n")
    log.close()
    assert (tmp_path / "x.log.1").read_bytes() == b"old\n" * 1024
    assert (tmp_path / "x.log").read_bytes() == b"new\n"


async def test_a_chatty_child_cannot_fill_the_disk(tmp_path: Path) -> None:
    policy = LogPolicy(max_bytes=65_536, backups=2)
    supervisor = Supervisor(tmp_path, lambda _: None, policy)
    # About 1 MB of output, 16 times the bound.
    spec = ProcessSpec("chatty", "tests.tiffin.chatty", env={"CHATTY_LINES": "12000"})
    await supervisor.start_stage([spec])
    current = tmp_path / "chatty.log"
    try:
        async with asyncio.timeout(60):
            while not current.exists() or not current.read_bytes().endswith(b"done\n"):
                await asyncio.sleep(0.05)  # output of another process: no event to await
    finally:
        await supervisor.stop_all()
    logs = sorted(p.name for p in tmp_path.glob("chatty.log*"))
    assert logs == ["chatty.log", "chatty.log.1", "chatty.log.2"]
    total = sum(p.stat().st_size for p in tmp_path.glob("chatty.log*"))
    assert total <= 3 * (policy.max_bytes + 65_536)  # each file: the bound plus at most one read chunk
