"""tiffin up's side of the runner pool (runtime.runner.pool): the pool process, runners started from it, its memory.

A runner started from the pool is a `PooledChild`: tiffin up supervises it as it does a child process (pid,
wait, signals, output through a pipe it owns), though the pool is its parent. When the pool is not there (still
importing, crashed and restarting), `RunnerPool.spawn` returns None and the runner starts plainly instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tiffin.contracts import keys
from tiffin.contracts.runnerpool import PoolReport, PoolState, write_report
from tiffin.local.logfiles import LogPolicy
from tiffin.local.processes import ManagedProcess, ProcessSpec, Say

POOL_MODULE = "runtime.runner.pool"
SOCKET_ENV = "TIFFIN_RUNNER_POOL_SOCKET"
ENABLE_ENV = "TIFFIN_RUNNER_POOL"
"""`0` turns the pool off (as `tiffin up --no-runner-pool`)."""
REPORT_EVERY_S = 5.0
_CONNECT_TIMEOUT_S = 5.0


def enabled_by_env(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """False when TIFFIN_RUNNER_POOL is 0/false/no/off."""
    return environ.get(ENABLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class PoolUnavailable(OSError):
    """The pool cannot start a runner now (not ready yet, gone, or it refused)."""


class PooledChild:
    """A runner the pool forked, seen as a child process: pid, returncode, wait(), send_signal(), stdout."""

    def __init__(self, pid: int, conn: socket.socket, stdout: asyncio.StreamReader, pidfd: int | None) -> None:
        self.pid = pid
        self.stdout: asyncio.StreamReader | None = stdout
        self._conn = conn
        self._pidfd = pidfd
        self._returncode: int | None = None
        self._done: asyncio.Task[int] | None = None

    @property
    def returncode(self) -> int | None:
        return self._returncode

    def send_signal(self, sig: int) -> None:
        """Signal the runner (ProcessLookupError once it is gone, as for a child)."""
        if self._returncode is not None:
            raise ProcessLookupError(self.pid)
        os.kill(self.pid, sig)

    async def wait(self) -> int:
        """The exit code the pool reports; -1 when the pool went away first (then the runner's exit is awaited)."""
        if self._done is None:
            self._done = asyncio.create_task(self._wait(), name=f"pooled-{self.pid}")
        return await asyncio.shield(self._done)

    async def _wait(self) -> int:
        loop = asyncio.get_running_loop()
        code = -1
        buffer = b""
        try:
            while chunk := await loop.sock_recv(self._conn, 4096):
                buffer += chunk
                if b"\n" in buffer:
                    line, _, buffer = buffer.partition(b"\n")
                    code = int(json.loads(line).get("exit", -1))
                    break
        except (OSError, ValueError):
            pass
        finally:
            self._conn.close()
        if code == -1:
            await self._gone()  # the pool died first: its SIGKILL to the runner is on the way
        self._returncode = code
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        return code

    async def _gone(self) -> None:
        if self._pidfd is None:
            return
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        loop.add_reader(self._pidfd, exited.set_result, None)  # a pidfd turns readable when the process exits
        try:
            await exited
        finally:
            loop.remove_reader(self._pidfd)


class RunnerPool:
    """The pool process (restarted if it crashes) and the client that starts runners from it."""

    def __init__(self, socket_path: Path, env: dict[str, str], log_dir: Path, say: Say,
                 log_policy: LogPolicy | None = None) -> None:  # fmt: skip
        self.socket_path = socket_path
        self.say = say
        spec = ProcessSpec("runner-pool", POOL_MODULE, {**env, SOCKET_ENV: str(socket_path)}, stop_timeout_s=10)
        self.process = ManagedProcess(spec, log_dir, say, log_policy)
        self.started = 0
        self.fallbacks = 0
        self._said_unavailable = False

    async def start(self) -> None:
        """Start the pool process; it accepts once its imports are done (meanwhile runners start plainly)."""
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a previous run's: connecting to it must not look like a ready pool
        await self.process.start()

    async def stop(self) -> None:
        await self.process.stop()

    async def spawn(self, env: dict[str, str]) -> PooledChild | None:
        """Fork a runner with `env` from the pool; None (and the caller starts it plainly) if the pool cannot."""
        try:
            child = await self._spawn(env)
        except PoolUnavailable as exc:
            self.fallbacks += 1
            if not self._said_unavailable:  # once per outage, not per runner
                self._said_unavailable = True
                self.say(f"runner pool unavailable ({exc}); starting runners plainly until it is back")
            return None
        if self._said_unavailable:
            self._said_unavailable = False
            self.say("runner pool is back: runners start from it again")
        self.started += 1
        return child

    async def _spawn(self, env: dict[str, str]) -> PooledChild:
        loop = asyncio.get_running_loop()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.setblocking(False)
        read_fd, write_fd = os.pipe()
        try:
            try:
                await asyncio.wait_for(loop.sock_connect(conn, str(self.socket_path)), _CONNECT_TIMEOUT_S)
                # One small message: a fresh Unix socket's buffer takes it at once.
                socket.send_fds(conn, [json.dumps({"env": env}).encode() + b"\n"], [write_fd])
                reply = await asyncio.wait_for(self._line(conn), _CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                raise PoolUnavailable(str(exc) or type(exc).__name__) from exc
            finally:
                os.close(write_fd)  # the runner has its copy; the pipe ends when every writer is gone
            if "pid" not in reply:
                raise PoolUnavailable(f"the pool refused: {reply.get('error', reply)}")
            pid = int(reply["pid"])
            try:
                pidfd: int | None = os.pidfd_open(pid)
            except (OSError, AttributeError):
                pidfd = None  # already gone (its exit comes on the connection) or no pidfd here
            reader = asyncio.StreamReader(limit=2**20)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0))
        except BaseException:
            conn.close()
            with contextlib.suppress(OSError):
                os.close(read_fd)
            raise
        return PooledChild(pid, conn, reader, pidfd)

    @staticmethod
    async def _line(conn: socket.socket) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        data = b""
        while not data.endswith(b"\n"):
            chunk = await loop.sock_recv(conn, 4096)
            if not chunk:
                raise PoolUnavailable("the pool closed the connection")
            data += chunk
        try:
            reply = json.loads(data)
        except ValueError as exc:
            raise PoolUnavailable(f"unreadable reply from the pool: {data[:200]!r}") from exc
        if not isinstance(reply, dict):
            raise PoolUnavailable(f"unreadable reply from the pool: {data[:200]!r}")
        return reply

    def memory(self) -> dict[str, int] | None:
        """The pool process's resident and proportional set size in bytes, or None when it is not running."""
        proc = self.process.process
        if proc is None or proc.returncode is not None:
            return None
        return read_memory(proc.pid)

    async def report(self, redis: Redis, stop: asyncio.Event) -> None:
        """Every REPORT_EVERY_S until `stop`: the pool's memory and counts (tiffin.contracts.runnerpool)."""
        while not stop.is_set():
            memory = await asyncio.to_thread(self.memory) or {}
            proc = self.process.process
            state: PoolState = "down"
            if memory:
                state = "ready" if self.socket_path.exists() else "starting"
            report = PoolReport(
                state=state, rss_bytes=memory.get("rss_bytes", 0), pss_bytes=memory.get("pss_bytes", 0),
                pid=proc.pid if proc is not None else 0, runners_started=self.started,
                plain_fallbacks=self.fallbacks, restarts=self.process.restarts, updated_ms=int(time.time() * 1000),
            )  # fmt: skip
            with contextlib.suppress(RedisError, OSError):
                await write_report(redis, report)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REPORT_EVERY_S)
        with contextlib.suppress(RedisError, OSError):
            await redis.delete(keys.RUNNER_POOL)


def read_memory(pid: int) -> dict[str, int] | None:
    """RSS (VmRSS) and PSS (its share of pages its forks also use) of `pid`, in bytes; None if unreadable."""
    out: dict[str, int] = {}
    for path, field, name in ((f"/proc/{pid}/status", "VmRSS:", "rss_bytes"),
                              (f"/proc/{pid}/smaps_rollup", "Pss:", "pss_bytes")):  # fmt: skip
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(field):
                    out[name] = int(line.split()[1]) * 1024  # the kernel writes kB
                    break
        except (OSError, ValueError, IndexError):
            continue
    return out or None
