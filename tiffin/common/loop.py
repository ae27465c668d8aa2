"""The event loop every component runs on: uvloop where it is installed, asyncio's own otherwise.

Measured with bench/peers.py: uvloop cuts each hop's CPU per request (aiohttp server and client, redis-py),
which is most of what the request path costs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """How to make a new event loop: uvloop's if importable, else asyncio's default."""
    try:
        import uvloop
    except ImportError:  # an install without it (e.g. a platform uvloop does not build on) still runs
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def new_loop() -> asyncio.AbstractEventLoop:
    """A fresh event loop of the fastest kind available (for `aiohttp.web.run_app(loop=...)`)."""
    return loop_factory()()


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the fastest event loop available."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
