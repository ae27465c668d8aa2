"""Local processes: start tiffin's components as children, replace ones that crash, stop them in order.

Every child gets a parent-death signal (tiffin.common.parentdeath): if `tiffin up` dies without stopping them, they go
too. tiffin's own components get SIGKILL then: with their supervisor gone a drain cannot finish (its peers die
at the same moment), would hold ports the next `tiffin up` needs, and what they keep lives in Redis, with
heartbeats that lapse and a reclaim of what they had taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tiffin.common.parentdeath import with_parent_death
from tiffin.local.logfiles import LogPolicy, RotatingLog, finish_pump, pump

Say = Callable[[str], None]

_BACKOFF_MAX_S = 30.0
_STABLE_S = 60.0
"""A spawn that ran this long was healthy: the next crash restarts after the first back-off step again."""
_PUMP_GRACE_S = 2.0


class Child(Protocol):
    """What supervising a process needs: an asyncio subprocess, or a runner the runner pool forked."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    @property
    def stdout(self) -> asyncio.StreamReader | None: ...
    async def wait(self) -> int: ...
    def send_signal(self, sig: int) -> None: ...


class Launcher(Protocol):
    """Starts a process another way than exec (the runner pool); None means "start it plainly"."""

    async def spawn(self, env: dict[str, str]) -> Child | None: ...


@dataclass(frozen=True)
class ProcessSpec:
    """One component process: a Python module run with its environment."""

    name: str
    module: str
    env: dict[str, str] = field(default_factory=dict)
    stop_timeout_s: float = 60.0
    fresh_replica_id: bool = False
    """Give each spawn its own TIFFIN_REPLICA_ID (suffix -N): a restarted queue consumer must not inherit the
    name of its dead predecessor, or that one's pending requests would look owned by a live replica forever."""
    command: tuple[str, ...] = ()
    """A program to run instead of `python -m module` (the embedded redis-server)."""
    death_signal: int = signal.SIGKILL
    """What the child gets when `tiffin up` dies without stopping it (see the module docstring)."""
    launcher: Launcher | None = None
    """Tried first for every (re)start: the runner pool, which forks the process with the same environment."""

    def argv(self) -> list[str]:
        return list(self.command) if self.command else [sys.executable, "-m", self.module]


def tail(path: Path, lines: int) -> list[str]:
    """The last non-empty lines of a log file (what a user needs to see when a process dies)."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 16_384))
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    return [line[:300] for line in text.splitlines() if line.strip()][-lines:]


class ManagedProcess:
    """A child with its log file (size-bounded, rotated); restarted with backoff if it exits while it should run."""

    def __init__(self, spec: ProcessSpec, log_dir: Path, say: Say, log_policy: LogPolicy | None = None) -> None:
        self.spec = spec
        self.log_path = log_dir / f"{spec.name}.log"
        self.log_policy = log_policy or LogPolicy()
        self.say = say
        self.process: Child | None = None
        self._log: RotatingLog | None = None
        self._pump: asyncio.Task[None] | None = None
        self._pumps: set[asyncio.Task[None]] = set()  # a dead spawn's grandchildren may still be writing
        self.restarts = 0
        self.spawns = 0
        self._wanted = False
        self._watcher: asyncio.Task[None] | None = None
        self._spawned_at = 0.0

    async def start(self) -> None:
        self._wanted = True
        await self._spawn()
        self._watcher = asyncio.create_task(self._watch(), name=f"watch-{self.spec.name}")

    async def _spawn(self) -> None:
        self.spawns += 1
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.spec.env}
        if self.spec.fresh_replica_id:
            env["TIFFIN_REPLICA_ID"] = f"{self.spec.env.get('TIFFIN_REPLICA_ID', self.spec.name)}-{self.spawns}"
        if self._log is None:
            self._log = RotatingLog(self.log_path, self.log_policy)
        self.process = await self.spec.launcher.spawn(env) if self.spec.launcher is not None else None
        if self.process is None:
            self.process = await self._exec(env)
        self._spawned_at = time.monotonic()
        assert self.process.stdout is not None
        self._pump = asyncio.create_task(pump(self.process.stdout, self._log), name=f"log-{self.spec.name}")
        self._pumps.add(self._pump)
        self._pump.add_done_callback(self._pumps.discard)

    async def _exec(self, env: dict[str, str]) -> asyncio.subprocess.Process:
        # Own session: a terminal's Ctrl-C reaches only `tiffin up`, which stops children in order.
        # Output goes through a pipe so that tiffin, not the child, bounds the log's size.
        return await asyncio.create_subprocess_exec(
            # Started by the event loop's thread, which lives as long as tiffin up: see tiffin.common.parentdeath.
            *with_parent_death(self.spec.argv(), self.spec.death_signal), env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    async def _drain_log(self) -> None:
        if self._pump is not None:
            await finish_pump(self._pump, _PUMP_GRACE_S)

    async def _respawned(self) -> None:
        """Called after each restart (not the first start); a subclass waits for readiness here."""

    async def _watch(self) -> None:
        backoff = 1.0
        while self._wanted and self.process is not None:
            code = await self.process.wait()
            if not self._wanted:
                return
            self.restarts += 1
            if time.monotonic() - self._spawned_at >= _STABLE_S:
                backoff = 1.0  # a crash after a long healthy run is not a crash loop
            await self._drain_log()  # its last words, before they are shown
            self.say(f"{self.spec.name} exited with code {code}; restarting in {backoff:.0f}s (log: {self.log_path})")
            for line in tail(self.log_path, 5):
                self.say(f"  {self.spec.name}| {line}")
            await asyncio.sleep(backoff)  # crash-loop backoff, not synchronisation
            backoff = min(backoff * 2, _BACKOFF_MAX_S)
            if self._wanted:
                await self._spawn()
                await self._respawned()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self) -> None:
        """SIGTERM, wait for a graceful exit, then SIGKILL the whole process group."""
        self._wanted = False
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.spec.stop_timeout_s)
            except TimeoutError:
                self.say(f"{self.spec.name} did not stop within {self.spec.stop_timeout_s:.0f}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        await self._drain_log()
        for task in list(self._pumps):
            task.cancel()  # a grandchild outside the group still holds the pipe: stop copying it
        if self._pumps:
            await asyncio.gather(*self._pumps, return_exceptions=True)
        if self._log is not None:
            self._log.close()
            self._log = None


class Supervisor:
    """Starts process groups in order and stops them in the reverse order."""

    def __init__(self, log_dir: Path, say: Say, log_policy: LogPolicy | None = None) -> None:
        self.log_dir = log_dir
        self.say = say
        self.log_policy = log_policy
        self.stages: list[list[ManagedProcess]] = []

    async def start_stage(self, specs: list[ProcessSpec]) -> list[ManagedProcess]:
        procs = [ManagedProcess(spec, self.log_dir, self.say, self.log_policy) for spec in specs]
        for proc in procs:
            await proc.start()
        self.stages.append(procs)
        return procs

    async def stop_all(self) -> None:
        """The reverse of start: the edge first (it drains), runners last."""
        for stage in reversed(self.stages):
            await asyncio.gather(*(proc.stop() for proc in stage))
        self.stages.clear()
