"""The embedded Redis as a supervised child of `tiffin up`: restarted like every other child when it dies.

It comes back on the same port with the same password (its config file), so the REDIS_URL every component
holds stays valid, and with its append-only file, so what was queued when it died is still there. Its log goes
through tiffin's size-bounded log files like the other children's.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from tiffin.contracts.exceptions import RedisServerError
from tiffin.local.logfiles import LogPolicy
from tiffin.local.processes import ManagedProcess, ProcessSpec, Say
from tiffin.local.redis_server import EmbeddedRedis

READY_TIMEOUT_S = 30.0  # loading a large append-only file takes a while
_PING_EVERY_S = 0.05


class RedisProcess(ManagedProcess):
    """An `EmbeddedRedis` whose process `tiffin up` keeps running; `server.json` always names the live one."""

    def __init__(self, server: EmbeddedRedis, log_dir: Path, say: Say, log_policy: LogPolicy | None = None) -> None:
        # SIGTERM when `tiffin up` dies: Redis then flushes its append-only file and exits at once.
        spec = ProcessSpec("redis", "redis-server", command=tuple(server.command()), stop_timeout_s=10.0,
                           death_signal=signal.SIGTERM)  # fmt: skip
        super().__init__(spec, log_dir, say, log_policy)
        self.server = server

    async def start(self) -> None:
        """Start it and wait until it answers; `RedisServerError` (with its last log lines) if it does not."""
        await asyncio.to_thread(self.server.prepare)
        await super().start()
        if not await self._wait_answering():
            await self.stop()
            raise RedisServerError(f"redis-server did not start on port {self.server.port}; see {self.log_path}")

    async def _respawned(self) -> None:
        if await self._wait_answering():
            self.say(f"redis is back on port {self.server.port} with its append-only file (restart {self.restarts}); "
                     "components reconnect by themselves")  # fmt: skip
        elif self.running:
            self.say(f"redis did not answer within {READY_TIMEOUT_S:.0f}s of its restart; see {self.log_path}")

    async def _wait_answering(self) -> bool:
        """Wait until this spawn answers PING (then record it in server.json); False if it exits or times out."""
        proc = self.process
        deadline = time.monotonic() + READY_TIMEOUT_S
        while proc is not None and proc.returncode is None and time.monotonic() < deadline:
            if await self.server.answers():
                self.server.write_server_file(proc.pid)
                return True
            await asyncio.sleep(_PING_EVERY_S)  # a starting server gives no readiness event; PING is the signal
        return False

    async def stop(self) -> None:
        await super().stop()
        self.server.release()
