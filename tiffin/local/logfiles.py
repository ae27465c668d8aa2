"""Size-bounded log files for `tiffin up`'s children: one file per process, rotated to `.1` ... `.N`."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tiffin.common.env import env_int

_READ_CHUNK = 65_536


@dataclass(frozen=True)
class LogPolicy:
    """How large a log file may grow and how many rotated files are kept beside it."""

    max_bytes: int = 50 * 1_048_576
    """TIFFIN_LOG_MAX_BYTES: a log file is rotated once it reaches this size (default 50 MiB)."""
    backups: int = 3
    """TIFFIN_LOG_BACKUPS: rotated files kept (`x.log.1` is the newest); older ones are deleted (default 3)."""

    @classmethod
    def from_env(cls) -> LogPolicy:
        max_bytes = env_int("TIFFIN_LOG_MAX_BYTES", cls.max_bytes)
        backups = env_int("TIFFIN_LOG_BACKUPS", cls.backups)
        if max_bytes < 4096 or backups < 0:
            raise SystemExit("TIFFIN_LOG_MAX_BYTES must be at least 4096 and TIFFIN_LOG_BACKUPS at least 0")
        return cls(max_bytes, backups)


class RotatingLog:
    """An append-only file that moves aside to `.1` (shifting older ones) when it passes `max_bytes`."""

    def __init__(self, path: Path, policy: LogPolicy) -> None:
        self.path = path
        self.policy = policy
        self._file: BinaryIO = path.open("ab")
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        """Append `data`; rotates first if the file is already full (a chunk never splits across files)."""
        if self._size >= self.policy.max_bytes:
            self._rotate()
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def _rotate(self) -> None:
        self._file.close()
        if self.policy.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for n in range(self.policy.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file = self.path.open("ab")
        self._size = 0

    def close(self) -> None:
        self._file.close()


async def pump(stream: asyncio.StreamReader, log: RotatingLog) -> None:
    """Copy a child's output into its log until the pipe closes (every writer, grandchildren too, is gone)."""
    while chunk := await stream.read(_READ_CHUNK):
        log.write(chunk)


async def finish_pump(task: asyncio.Task[None], grace_s: float) -> None:
    """Let a pump drain what its process wrote last; a grandchild still holding the pipe is not waited for."""
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), grace_s)
