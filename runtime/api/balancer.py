"""Runner choice for one API server: least requests in flight from here, a cap per runner, suspects skipped.

No HTTP here: the balancer hands out leases on runners; the caller releases them and reports failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import structlog
from redis.exceptions import RedisError

from tiffin.contracts.exceptions import Draining, NoRunner

log = structlog.get_logger("runtime.api.balancer")

ReadyRunners = Callable[[], Awaitable[dict[str, dict[str, Any]]]]
"""Source of ready runners: id -> info with at least "url" (`tiffin.contracts.registry.Registry.ready`)."""


class Lease:
    """One request's slot on one runner; `release()` (idempotent) gives it back."""

    def __init__(self, balancer: Balancer, runner_id: str, url: str, waited_s: float) -> None:
        self.runner_id = runner_id
        self.url = url
        self.waited_s = waited_s
        self._balancer = balancer
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._balancer._release(self.runner_id)


class Balancer:
    """Leases runners of one deployment to the requests of this API server."""

    def __init__(
        self,
        ready: ReadyRunners,
        concurrency: int,
        *,
        cache_s: float = 0.5,
        poll_s: float = 0.25,
        suspect_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self._ready_source = ready
        self.concurrency = concurrency
        self.cache_s = cache_s
        self.poll_s = poll_s
        self.suspect_s = suspect_s
        self._rng = rng or random.Random()
        self._runners: dict[str, str] = {}  # id -> url, as last read from the registry
        self._fetched_at = -math.inf
        self._fetch_lock = asyncio.Lock()
        self._in_flight: dict[str, int] = {}
        self._suspect_until: dict[str, float] = {}
        self._changed = asyncio.Event()  # replaced after each set: waiters wait on the one they saw
        self._draining = False
        self.waiting = 0
        """Requests waiting for a runner or a free slot right now."""
        self.load_changed = asyncio.Event()
        """Set whenever `waiting` or a runner's load changes; its one reader (the load reporter) clears it."""

    def drain(self) -> None:
        """Refuse waiting and new requests from now on (shutting down); leases already out finish."""
        self._draining = True
        self._wake()

    def load(self, runner_id: str) -> int:
        """Requests this API server has in flight at `runner_id`."""
        return self._in_flight.get(runner_id, 0)

    def in_flight(self) -> dict[str, int]:
        """A copy of the requests in flight per runner id (runners with none are left out)."""
        return dict(self._in_flight)

    def suspect(self, runner_id: str) -> None:
        """Skip `runner_id` for `suspect_s` seconds (it refused a connection, say)."""
        self._suspect_until[runner_id] = time.monotonic() + self.suspect_s
        log.warning("runner_suspect", runner=runner_id, for_s=self.suspect_s)

    def is_suspect(self, runner_id: str) -> bool:
        until = self._suspect_until.get(runner_id)
        if until is None:
            return False
        if until <= time.monotonic():
            del self._suspect_until[runner_id]
            return False
        return True

    async def acquire(self, deadline: float, exclude: Collection[str] = (), wait_for_runners: bool = True) -> Lease:
        """A slot on the least-loaded ready runner, waiting until `deadline` (time.monotonic()) for one.

        With `wait_for_runners=False`, fail at once when no (non-excluded) runner is ready, but still wait for
        a slot on a busy one. Raises `NoRunner` past the deadline, `Draining` once `drain()` was called.
        """
        started = time.monotonic()
        self.waiting += 1
        self.load_changed.set()
        try:
            while True:
                if self._draining:
                    raise Draining("this API server is shutting down; retry")
                runners = await self._ready()
                candidates = [rid for rid in runners if rid not in exclude and not self.is_suspect(rid)]
                free = [rid for rid in candidates if self.load(rid) < self.concurrency]
                if free:
                    least = min(self.load(rid) for rid in free)
                    chosen = self._rng.choice([rid for rid in free if self.load(rid) == least])
                    self._in_flight[chosen] = self.load(chosen) + 1
                    self.load_changed.set()
                    return Lease(self, chosen, runners[chosen], time.monotonic() - started)
                if not candidates and not wait_for_runners:
                    raise NoRunner("no other runner is ready")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NoRunner(
                        "no runner was ready within the wait deadline" if not candidates else "all runners are busy"
                    )
                # A release wakes us at once; the timeout re-reads the registry for runners that came or went.
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(remaining, self.cache_s if candidates else self.poll_s))
        finally:
            self.waiting -= 1
            self.load_changed.set()

    def _release(self, runner_id: str) -> None:
        left = self.load(runner_id) - 1
        if left > 0:
            self._in_flight[runner_id] = left
        else:
            self._in_flight.pop(runner_id, None)  # runners come and go: keep no entry for idle ones
        self.load_changed.set()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _ready(self) -> dict[str, str]:
        """The registry's ready runners, cached briefly (an empty answer more briefly) to spare Redis."""
        async with self._fetch_lock:
            ttl = self.cache_s if self._runners else min(self.cache_s, self.poll_s / 2)
            if time.monotonic() - self._fetched_at < ttl:
                return self._runners
            try:
                ready = await self._ready_source()
            except (RedisError, OSError) as exc:  # keep serving from what we knew; the next refresh retries
                log.warning("registry_unavailable", error=str(exc))
            else:
                self._runners = {rid: str(info["url"]) for rid, info in ready.items() if "url" in info}
            self._fetched_at = time.monotonic()
            return self._runners
