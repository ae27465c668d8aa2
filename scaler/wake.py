"""Wakes: one Redis pub/sub subscription per scaler process, fanned out to the open streams per deployment.

The enqueue script publishes a deployment's name on `keys.WAKE_CHANNEL` when a request finds it cold. Pub/sub
keeps nothing for a subscriber that is away, so after every (re)subscription all waiters are nudged to
re-read Redis: whatever was published during an outage is then seen in the state it left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterator

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tiffin.contracts import keys

log = structlog.get_logger("scaler.wake")


class Waiter:
    """One stream's view of its deployment's wakes: set on a wake or a resubscription, cleared by the stream."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._wakes = 0

    def notify(self, *, wake: bool) -> None:
        """Nudge the stream; `wake` counts a real wake (a request found the deployment cold)."""
        if wake:
            self._wakes += 1
        self._event.set()

    async def wait(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for a nudge; True if one came."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._event.wait()
        except TimeoutError:
            return False
        return True

    def take(self) -> int:
        """Clear the nudge and return how many real wakes (not resubscriptions) came since the last call."""
        # Cleared before the caller reads Redis, so a wake arriving during that read nudges it again.
        self._event.clear()
        wakes, self._wakes = self._wakes, 0
        return wakes


class WakeHub:
    """The process's single subscription to `keys.WAKE_CHANNEL`, reconnecting with backoff."""

    def __init__(
        self, redis: Redis, channel: str = keys.WAKE_CHANNEL, backoff_s: float = 0.1, max_backoff_s: float = 5.0
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._waiters: defaultdict[str, set[Waiter]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        """Set while the subscription is confirmed by Redis; health reports NOT_SERVING otherwise."""

    def start(self) -> None:
        """Start subscribing in the background (await `subscribed` to know it is live)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="wake-subscription")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.subscribed.clear()

    @contextlib.contextmanager
    def waiter(self, deployment: str) -> Iterator[Waiter]:
        """A waiter for `deployment`'s wakes, registered for the duration of the block."""
        waiter = Waiter()
        self._waiters[deployment].add(waiter)
        try:
            yield waiter
        finally:
            self._waiters[deployment].discard(waiter)
            if not self._waiters[deployment]:
                del self._waiters[deployment]

    def _wake(self, deployment: str) -> None:
        for waiter in self._waiters.get(deployment, ()):
            waiter.notify(wake=True)

    def nudge_all(self) -> None:
        """Make every waiter re-read Redis (nothing is counted as a wake)."""
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.notify(wake=False)

    async def _run(self) -> None:
        backoff = self._backoff_s
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    while True:
                        # The timeout lets redis-py's periodic health check PING a connection gone silent.
                        message = await pubsub.get_message(timeout=5.0)
                        if message is None:
                            continue
                        if message["type"] == "subscribe":
                            # Also seen when redis-py reconnects and resubscribes by itself: either way, what was
                            # published before this point may have been missed, so every stream re-reads Redis.
                            log.info("wake_subscribed", channel=self._channel, again=self.subscribed.is_set())
                            self.subscribed.set()
                            self.nudge_all()
                            backoff = self._backoff_s
                        elif message["type"] == "message":
                            data = message["data"]
                            self._wake(data.decode(errors="replace") if isinstance(data, bytes) else str(data))
            except (RedisError, OSError) as exc:
                event = "wake_subscription_lost" if self.subscribed.is_set() else "wake_subscribe_failed"
                log.warning(event, error=repr(exc), retry_in_s=backoff)
            finally:
                self.subscribed.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)
