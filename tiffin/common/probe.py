"""Readiness probing over HTTP: a process's health endpoint is often the only signal that it is ready."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import aiohttp

POLL_S = 0.2


async def answers_ok(session: aiohttp.ClientSession, url: str, timeout_s: float = 2.0) -> bool:
    """Whether `url` answers 200 within `timeout_s` (refused, failing or slow: no)."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def wait_until_ok(
    session: aiohttp.ClientSession, url: str, stop: asyncio.Event, timeout_s: float = math.inf, poll_s: float = POLL_S
) -> bool:
    """Poll `url` until it answers 200 (True), or until `stop` is set or `timeout_s` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stop.is_set():
        if await answers_ok(session, url):
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll_s)
    return False
