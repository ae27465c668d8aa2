"""Requests whose place in Redis is unknown because Redis failed mid-command: withdrawn once it answers again.

A command that timed out may still have run (a slow or paused Redis), so a request refused with 503, or one
whose client left while Redis was unreachable, may sit in the queue with nobody waiting for it. One task per
interceptor retries the cancel for all of them, so no replica spends time on an answer nobody can read.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog
from redis.exceptions import RedisError

from tiffin.contracts.queue import DeploymentQueue

log = structlog.get_logger("interceptor.withdrawals")

RETRY_S = 1.0
# A cancel with no entry id: the request state names its entry (an unknown one deletes nothing).
NO_ENTRY = b"0-0"


@dataclass
class _Pending:
    queue: DeploymentQueue
    entry_id: bytes
    give_up_at: float
    """Loop time after which the request's state has expired in Redis anyway (nothing left to withdraw)."""


class PendingWithdrawals:
    """Cancels (even in flight) that could not reach Redis, retried every `RETRY_S` until they do."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._pending: dict[str, _Pending] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, queue: DeploymentQueue, request_id: str, entry_id: bytes | None, ttl_s: float) -> None:
        """Withdraw `request_id` as soon as Redis answers (within `ttl_s`, after which its state has lapsed)."""
        loop = asyncio.get_running_loop()
        self._pending[request_id] = _Pending(queue, entry_id or NO_ENTRY, loop.time() + ttl_s)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="pending-withdrawals")

    async def withdraw(self, queue: DeploymentQueue, request_id: str, entry_id: bytes | None, ttl_s: float) -> None:
        """Cancel a request now if Redis answers in time, else leave it to the retries."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await queue.cancel(request_id, entry_id or NO_ENTRY, even_if_taken=True)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("withdrawal_deferred", request_id=request_id, error=str(exc) or type(exc).__name__)
            self.add(queue, request_id, entry_id, ttl_s)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            began = loop.time()
            for request_id, pending in list(self._pending.items()):
                if loop.time() > pending.give_up_at:
                    del self._pending[request_id]
                    continue
                try:
                    async with asyncio.timeout(self.timeout_s):
                        state = await pending.queue.cancel(request_id, pending.entry_id, even_if_taken=True)
                except (RedisError, OSError, TimeoutError):
                    break  # still unreachable: try them all again
                del self._pending[request_id]
                if state == "cancelled":
                    log.info("request_withdrawn_late", deployment=pending.queue.deployment, request_id=request_id)
            # A cancel that waited out a paused Redis retries at once, so one is always in Redis's input when it
            # resumes (ahead of any proxy's take); one refused at once (Redis down) waits a little first.
            idle = RETRY_S - (loop.time() - began)
            if self._pending and idle > 0:
                await asyncio.sleep(idle)  # waiting for Redis to come back; nothing to await but time

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
