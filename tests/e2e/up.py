"""Drive `tiffin up` as a user would: a child process whose printed lines are read from its log."""

from __future__ import annotations

import re
import ssl
import sys
import time
from pathlib import Path

from tests.procs import Proc
from tiffin.local.ports import free_port


class Up:
    """`tiffin up CONFIG` in the foreground, on free ports, with its own state folder."""

    def __init__(self, configs: list[Path], state_dir: Path, env: dict[str, str] | None = None,
                 args: list[str] | None = None, name: str = "tiffin-up") -> None:  # fmt: skip
        self.port, self.admin_port = free_port(), free_port()
        self.state_dir = state_dir
        argv = [sys.executable, "-m", "tiffin", "up", *map(str, configs), "--state-dir", str(state_dir),
                "--port", str(self.port), "--admin-port", str(self.admin_port), *(args or [])]  # fmt: skip
        log_dir = state_dir.parent
        self.proc = Proc(name, argv, env or {}, log_dir)

    @property
    def url(self) -> str:
        """The public base URL: HTTPS, with the certificate of the local CA in the state folder."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        """The local CA `tiffin up` made (or reused) in its state folder."""
        return self.state_dir / "tls" / "ca.pem"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only the local CA, with verification on (as a careful client runs)."""
        return ssl.create_default_context(cafile=self.ca)

    def api_key(self, deployment: str, timeout_s: float = 120) -> str:
        """The key `tiffin up` printed for `deployment` on its first run (it never prints one again)."""
        line = self.wait_for_line(f"{deployment}: API key (shown only now", timeout_s)
        found = re.search(r"(tfn_[0-9a-f]{12}_[A-Za-z0-9_-]{43})", line)
        assert found, line
        return found.group(1)

    def wait_for_line(self, text: str, timeout_s: float) -> str:
        """Wait until `tiffin up` prints a line containing `text`; fail with its output if it exits."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = self.proc.log()
            for line in out.splitlines():
                if text in line:
                    return line
            if not self.proc.alive():
                raise AssertionError(f"tiffin up exited with {self.proc.popen.returncode}:\n{out[-6000:]}")
            time.sleep(0.2)  # the process prints; there is no other event to await
        raise AssertionError(f"tiffin up never printed {text!r} in {timeout_s}s:\n{self.proc.log()[-6000:]}")
