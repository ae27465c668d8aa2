"""`python -m runtime.runner.pool`: a process that has imported the engine once and starts runners by fork.

It holds no model, no GPU memory and no port: only the imports (torch, vLLM and its OpenAI server, the runner).
It listens on a Unix socket (TIFFIN_RUNNER_POOL_SOCKET, created only once the imports are done, so a client
that can connect gets a warm pool). The protocol, one connection per runner:

- the client sends one JSON line `{"env": {...}}` (the runner's whole environment) with one file descriptor
  (SCM_RIGHTS): where the runner's stdout and stderr go;
- the pool forks; the child sets itself up (own session and process group, parent-death signal, the output
  descriptor, the environment) and runs `runtime.runner` as `python -m runtime.runner` would;
- the pool answers `{"pid": N}` and, when the runner exits, `{"exit": CODE}`, then closes the connection.

The pool is single-threaded and runs no event loop, so a fork copies a quiet process. Its children get SIGKILL
if it dies (as tiffin's components do when `tiffin up` dies): their engines then stop on SIGTERM.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import selectors
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from runtime.runner import forked

SOCKET_ENV = "TIFFIN_RUNNER_POOL_SOCKET"
_MAX_REQUEST = 1 << 20


class Pool:
    """The accept loop: forks a runner per request and reports each one's exit on its connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.parent = os.getpid()
        self.children: dict[int, socket.socket] = {}
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a crashed predecessor's socket
        tmp = self.path.with_name(self.path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        self.server.bind(str(tmp))
        self.server.listen(16)
        tmp.rename(self.path)  # appears only when it accepts
        self.selector.register(self.server, selectors.EVENT_READ, "accept")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "signal")
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # the wake-up fd carries it to the loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)

    def _stop(self, *_: Any) -> None:
        self.stopping = True

    def serve(self) -> None:
        """Until SIGTERM: accept requests, reap children."""
        while not self.stopping:
            for key, _ in self.selector.select():
                if key.data == "accept":
                    self._accept()
                else:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 512)
                    self._reap()
        self.selector.close()
        self.server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _accept(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        conn.settimeout(10.0)  # a client that connects and says nothing must not stall the pool
        fds: list[int] = []
        try:
            data, fds, _, _ = socket.recv_fds(conn, _MAX_REQUEST, 1)
            while not data.endswith(b"\n") and len(data) < _MAX_REQUEST:
                more = conn.recv(_MAX_REQUEST)
                if not more:
                    break
                data += more
            env = json.loads(data)["env"]
            if len(fds) != 1 or not isinstance(env, dict):
                raise ValueError("expected {'env': {...}} and one file descriptor")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"error": str(exc) or type(exc).__name__}).encode() + b"\n")
            conn.close()
            for fd in fds:
                os.close(fd)
            return
        pid = os.fork()
        if pid == 0:
            self._child(conn, fds[0], {str(k): str(v) for k, v in env.items()})
        os.close(fds[0])
        self.children[pid] = conn
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        print(f"runner-pool: started pid {pid} for {env.get('TIFFIN_REPLICA_ID', '?')}", flush=True)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            conn = self.children.pop(pid, None)
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
                conn.close()

    def _child(self, conn: socket.socket, out_fd: int, env: dict[str, str]) -> NoReturn:
        """In the fork: become a runner, as `python -m runtime.runner` with `env` and output to `out_fd`."""

        def become_runner() -> int:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            os.setsid()  # own process group: tiffin up stops it (and its engine) by group, as a plain start
            forked.set_parent_death(signal.SIGKILL)
            if os.getppid() != self.parent:
                os.kill(os.getpid(), signal.SIGKILL)
            self.selector.close()
            for sock in (self.server, conn, *self.children.values()):
                sock.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_fd, 1)
            os.dup2(out_fd, 2)
            os.close(null)
            os.close(out_fd)
            os.environ.clear()
            os.environ.update(env)
            from runtime.runner.__main__ import main

            return main()

        forked.exit_after(become_runner)  # never returns: the fork leaves with the runner's exit code

    def prepare(self) -> None:
        """Import everything a runner needs, then keep those objects out of the collector's way."""
        started = time.monotonic()
        forked.preimport()
        import runtime.runner.__main__  # noqa: F401 - the runner itself, with aiohttp, redis and structlog

        # Objects imported so far are never collected: a child's collections then do not touch (and copy) the
        # pages they live on.
        gc.collect()
        gc.freeze()
        print(f"runner-pool: imported the engine in {time.monotonic() - started:.1f}s", flush=True)


def main() -> int:
    path = Path(os.environ[SOCKET_ENV])
    pool = Pool(path)
    pool.prepare()
    pool.listen()
    print(f"runner-pool: ready on {path} (pid {os.getpid()})", flush=True)
    pool.serve()
    print("runner-pool: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
