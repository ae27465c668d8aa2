"""Tests of the API server and the runner; `until` waits for observable state instead of sleeping blindly."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tests.procs import Proc

NAME = "smol"
"""The deployment every runtime test serves."""


@dataclass
class Server:
    """A server process of the tests (API server or test upstream) and its port on loopback."""

    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


StartApi = Callable[..., Awaitable[Server]]
"""The `start_api` fixture (tests/runtime/conftest.py): `await start_api(env=None, app=None, **limits)`."""


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": NAME, "messages": [{"role": "user", "content": content}], **extra}


async def until(check: Callable[[], bool | Awaitable[bool]], timeout_s: float = 10.0, what: str = "") -> None:
    """Poll `check` (sync or async) until true; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout_s}s: {what or check}")
        await asyncio.sleep(0.05)  # polling observable state: there is no event to await across processes
