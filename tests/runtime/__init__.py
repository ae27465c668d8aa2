"""Tests of the API server and the runner; `until` waits for observable state instead of sleeping blindly."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


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
