"""Keeps this API server's runner load report (`tiffin.contracts.load`) in Redis, for the scaler and draining runners.

Changes are written promptly but coalesced (one write per `min_interval_s` at most); an unchanged report is
refreshed every TTL/3 so it lapses only when this server is gone.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from redis.exceptions import RedisError

from runtime.api.balancer import Balancer
from tiffin.contracts.load import LoadReport, RunnerLoad

log = structlog.get_logger("runtime.api.load")

MIN_INTERVAL_S = 0.1
RETRY_S = 0.5
WITHDRAW_TIMEOUT_S = 5.0


class LoadReporter:
    """Writes the balancer's numbers as this replica's `LoadReport`; `withdraw()` removes it."""

    def __init__(
        self,
        balancer: Balancer,
        load: RunnerLoad,
        replica_id: str,
        ttl_s: float,
        *,
        min_interval_s: float = MIN_INTERVAL_S,
        retry_s: float = RETRY_S,
    ) -> None:
        self._balancer = balancer
        self._load = load
        self.replica_id = replica_id
        self.refresh_s = ttl_s / 3
        # A write that hangs (Redis stalled) must not outlive the report it would refresh.
        self.write_timeout_s = self.refresh_s
        self.min_interval_s = min_interval_s
        self.retry_s = retry_s
        self._stop = asyncio.Event()

    def snapshot(self) -> LoadReport:
        return LoadReport(waiting=self._balancer.waiting, runners=self._balancer.in_flight())

    async def run(self) -> None:
        """Report until `stop()`; Redis errors are logged and retried, never raised."""
        changed = self._balancer.load_changed
        written: LoadReport | None = None
        written_at = -float("inf")
        failing = False
        while not self._stop.is_set():
            changed.clear()  # before the snapshot: a change after it sets the event again
            report = self.snapshot()
            if report != written or time.monotonic() - written_at >= self.refresh_s:
                try:
                    await asyncio.wait_for(self._load.report(self.replica_id, report), self.write_timeout_s)
                except (RedisError, OSError, TimeoutError) as exc:
                    if not failing:
                        log.warning("load_report_failed", error=str(exc) or type(exc).__name__)
                    failing, written = True, None
                    await self._idle(self.retry_s)
                    continue
                if failing:
                    log.info("load_report_recovered")
                failing, written, written_at = False, report, time.monotonic()
                await self._idle(self.min_interval_s)  # coalesce a burst; the next round writes what it left
                continue
            await self._idle(written_at + self.refresh_s - time.monotonic(), changed)

    def stop(self) -> None:
        self._stop.set()

    async def withdraw(self) -> None:
        """Remove the report now (clean shutdown); if Redis is out of reach, the TTL removes it instead."""
        try:
            await asyncio.wait_for(self._load.withdraw(self.replica_id), WITHDRAW_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("load_withdraw_failed", error=str(exc) or type(exc).__name__)

    async def _idle(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Wait `seconds`, or less if stopped or `wake` is set."""
        if seconds <= 0:
            return
        waits = [asyncio.create_task(self._stop.wait())]
        if wake is not None:
            waits.append(asyncio.create_task(wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
