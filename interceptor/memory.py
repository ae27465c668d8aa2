"""Giving memory back to the system after a burst (glibc keeps freed heap pages otherwise).

A slow reader is cut after its reply frames have passed through this process's heap in many mid-sized pieces;
glibc keeps those pages for reuse, so the process would stay at its peak size. `malloc_trim(0)` returns the free
pages. Called at most once per `MIN_INTERVAL_S`, a little after the event that freed the memory.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import ctypes.util
import sys
from collections.abc import Callable

import structlog

log = structlog.get_logger("interceptor")

MIN_INTERVAL_S = 2.0


def _load_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)  # glibc only (absent on musl)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_TRIM = _load_trim()
_scheduled: asyncio.TimerHandle | None = None


def give_back_soon() -> None:
    """Return freed heap pages to the system shortly (once for any number of calls within the interval)."""
    global _scheduled
    if _TRIM is None or _scheduled is not None:
        return
    # Not in the calling request's log context: the trim is about the process, not that request.
    context = contextvars.copy_context()
    context.run(structlog.contextvars.unbind_contextvars, "request_id", "client")
    _scheduled = asyncio.get_running_loop().call_later(MIN_INTERVAL_S, _trim_now, context=context)


def _rss_mib() -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _trim_now() -> None:
    global _scheduled
    _scheduled = None
    if _TRIM is not None:
        before = _rss_mib()
        _TRIM(0)
        log.info("memory_trimmed", rss_mib_before=before, rss_mib_after=_rss_mib())
