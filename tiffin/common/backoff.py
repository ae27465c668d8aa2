"""Retrying a dependency (Redis; the Kubernetes API) that went away: exponential back-off with jitter, reset once
it answers.

A loop that reads from Redis keeps running through an outage instead of crashing its process (which its
supervisor would restart into the same outage): it waits a little longer after each failure, up to a cap, logs
the outage once when it starts and once when it ends, and resumes where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import structlog
from redis.exceptions import ResponseError

log = structlog.get_logger("tiffin.common.backoff")

FIRST_S = 0.1
MAX_S = 5.0
_LOG_AGAIN_S = 30.0  # a long outage is still mentioned now and then, not on every retry


class Backoff:
    """Back-off state of one loop: `await failed(exc)` after an error, `succeeded()` after a good round."""

    def __init__(self, what: str, first_s: float = FIRST_S, max_s: float = MAX_S, dependency: str = "redis") -> None:
        self.what = what
        self.dependency = dependency  # named in the log events: `redis_unavailable`, `kubernetes_unavailable`
        self.first_s = first_s
        self.max_s = max_s
        self.failures = 0
        self._delay_s = first_s
        self._since = 0.0
        self._logged = 0.0

    async def failed(self, exc: BaseException, stop: asyncio.Event | None = None) -> None:
        """Note a failure and wait before the next try (returns early once `stop` is set)."""
        now = time.monotonic()
        if self.failures == 0:
            self._since = self._logged = now
            log.warning(f"{self.dependency}_unavailable", loop=self.what, error=str(exc) or type(exc).__name__)
        elif now - self._logged >= _LOG_AGAIN_S:
            self._logged = now
            log.warning(f"{self.dependency}_still_unavailable", loop=self.what, for_s=round(now - self._since, 1),
                        error=str(exc) or type(exc).__name__)  # fmt: skip
        self.failures += 1
        delay = self._delay_s * random.uniform(0.5, 1.0)  # jitter: many loops must not reconnect in step
        self._delay_s = min(self._delay_s * 2, self.max_s)
        if stop is None:
            await asyncio.sleep(delay)  # back-off, not synchronisation
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    def succeeded(self) -> None:
        """A round went through: log the end of an outage, and start the next one from the first step."""
        if self.failures:
            log.info(f"{self.dependency}_reconnected", loop=self.what, after_s=round(time.monotonic() - self._since, 1),
                     failures=self.failures)  # fmt: skip
        self.failures = 0
        self._delay_s = self.first_s


def is_nogroup(exc: BaseException) -> bool:
    """Whether Redis answered that a consumer group (or its stream) does not exist: it lost its data."""
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")
