"""The dashboard's history: one hour of 10 s steps per deployment in Redis, written by whoever knows each fact.

Each step is one hash (`keys.history_step`) that expires once it leaves the window, so the history is bounded
by construction: at most `POINTS + 2` step hashes and `SPARK_POINTS + 2` minute hashes per deployment.

- Replica counts (ready and desired per component): the scaling writer calls `record_replicas` (the local
  autoscaler each tick; the Kubernetes controller likewise). The last sample of a step stands for the step.
- Requests, errors, queue wait and upstream time: each interceptor aggregates in memory (`TrafficRecorder`) and
  adds its counts into the shared step with HINCRBY every couple of seconds, in one transaction. Several
  interceptors add into the same step; quantiles come from the merged bucket counts when read (`quantile`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tiffin.contracts import keys

log = structlog.get_logger("tiffin.contracts.history")

STEP_S = 10
WINDOW_S = 3600
POINTS = WINDOW_S // STEP_S
SPARK_STEP_S = 60
SPARK_POINTS = WINDOW_S // SPARK_STEP_S

BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
"""Upper bounds (seconds) of the histogram buckets; one more bucket past the last holds everything slower."""

# Hash fields of a step.
REQUESTS = "requests"
ERRORS = "errors"
QUEUE_WAIT = "q"
UPSTREAM = "u"
RUNNER_READY = "runner_ready"


def ready_field(component: keys.Component) -> str:
    return f"{component}_ready"


def desired_field(component: keys.Component) -> str:
    return f"{component}_desired"


def bucket_field(series: str, index: int) -> str:
    """The field of bucket `index` of `series` (QUEUE_WAIT or UPSTREAM)."""
    return f"{series}{index}"


def step_of(epoch_s: float, step_s: int = STEP_S) -> int:
    """The start (epoch seconds) of the step holding `epoch_s`."""
    return int(epoch_s // step_s) * step_s


def _expiry(start_s: int, step_s: int = STEP_S) -> int:
    """When a step's hash goes (epoch seconds): once the step has left the window, counted from the step's own
    time, not the write's, so a late write of an old step cannot keep it (one step of slack for clock skew)."""
    return start_s + WINDOW_S + 2 * step_s


def bucket_of(seconds: float) -> int:
    """The bucket an observation falls in: the first whose upper bound is at least it (Prometheus' `le`)."""
    return bisect_left(BUCKETS, seconds)


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The q-quantile (0..1) of merged bucket counts, interpolated within its bucket as Prometheus'
    `histogram_quantile` does; None with no observations. Past the last bound it answers the last bound."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index >= len(BUCKETS):
                return BUCKETS[-1]
            lower = BUCKETS[index - 1] if index > 0 else 0.0
            return lower + (BUCKETS[index] - lower) * max(0.0, rank - seen) / count
        seen += count
    return BUCKETS[-1]


async def record_replicas(
    redis: Redis,
    deployment: str,
    component: keys.Component,
    ready: int,
    desired: int | None,
    at_s: float | None = None,
) -> None:
    """Record one component's ready and desired replica counts in the current step (the scaling writer's part:
    the local autoscaler, or the Kubernetes controller). One round trip."""
    now = time.time() if at_s is None else at_s
    step = keys.history_step(deployment, step_of(now))
    fields: dict[str, int] = {ready_field(component): ready}
    if desired is not None:
        fields[desired_field(component)] = desired
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(step, mapping=fields)  # type: ignore[arg-type]
        pipe.expireat(step, _expiry(step_of(now)))
        if component == "runner":
            minute_s = step_of(now, SPARK_STEP_S)
            minute = keys.history_minute(deployment, minute_s)
            pipe.hset(minute, RUNNER_READY, ready)
            pipe.expireat(minute, _expiry(minute_s, SPARK_STEP_S))
        await pipe.execute()


@dataclass
class _Step:
    """One deployment's counts for one step, not yet written."""

    requests: int = 0
    errors: int = 0
    queue_wait: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    upstream: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def merge(self, other: _Step) -> None:
        self.requests += other.requests
        self.errors += other.errors
        for mine, theirs in ((self.queue_wait, other.queue_wait), (self.upstream, other.upstream)):
            for index, count in theirs.items():
                mine[index] += count


class TrafficRecorder:
    """An interceptor's request history: counted in memory per deployment and step, flushed in one transaction.

    No request costs a Redis round trip: `observe` only adds to a dict; `flush` (every couple of seconds, from
    `run`) adds everything counted since into the shared step hashes. Steps that could not be written (Redis
    away) are kept and retried, but never past the window, so memory stays bounded too.
    """

    def __init__(self, deployments: Iterable[str]) -> None:
        self.deployments = list(deployments)
        self._pending: dict[tuple[str, int], _Step] = {}

    def observe(
        self,
        deployment: str,
        error: bool,
        queue_wait_s: float | None = None,
        upstream_s: float | None = None,
        at_s: float | None = None,
    ) -> None:
        """Count one finished request. `error`: it ended with a status >= 500, or with an error frame or event
        after its head (a broken stream); refusals (4xx) and clients that left (499) are not errors."""
        now = time.time() if at_s is None else at_s
        step = self._pending.setdefault((deployment, step_of(now)), _Step())
        step.requests += 1
        step.errors += int(error)
        if queue_wait_s is not None:
            step.queue_wait[bucket_of(queue_wait_s)] += 1
        if upstream_s is not None:
            step.upstream[bucket_of(upstream_s)] += 1

    async def flush(self, redis: Redis, at_s: float | None = None) -> None:
        """Add everything counted so far into Redis (one MULTI/EXEC), and mark the current step of every
        deployment as recorded (zero requests is a fact, unlike a step no interceptor saw)."""
        now = time.time() if at_s is None else at_s
        pending, self._pending = self._pending, {}
        current = step_of(now)
        for name in self.deployments:
            pending.setdefault((name, current), _Step())
        try:
            async with redis.pipeline(transaction=True) as pipe:
                for (name, step_s), step in pending.items():
                    key = keys.history_step(name, step_s)
                    pipe.hincrby(key, REQUESTS, step.requests)
                    pipe.hincrby(key, ERRORS, step.errors)
                    for series, buckets in ((QUEUE_WAIT, step.queue_wait), (UPSTREAM, step.upstream)):
                        for index, count in buckets.items():
                            pipe.hincrby(key, bucket_field(series, index), count)
                    pipe.expireat(key, _expiry(step_s))
                    minute_s = step_of(step_s, SPARK_STEP_S)
                    minute = keys.history_minute(name, minute_s)
                    pipe.hincrby(minute, REQUESTS, step.requests)
                    pipe.expireat(minute, _expiry(minute_s, SPARK_STEP_S))
                await pipe.execute()
        except (RedisError, OSError):
            self._keep(pending, now)
            raise

    def _keep(self, pending: dict[tuple[str, int], _Step], now: float) -> None:
        """Put unwritten counts back for the next flush, dropping steps already out of the window."""
        for (name, step_s), step in pending.items():
            if step_s < now - WINDOW_S or (step.requests == 0 and not step.queue_wait and not step.upstream):
                continue
            self._pending.setdefault((name, step_s), _Step()).merge(step)

    async def run(self, redis: Redis, stop: asyncio.Event, every_s: float = 2.0) -> None:
        """Flush every `every_s` until `stop`, then once more; a Redis outage is logged once, not raised."""
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            try:
                await self.flush(redis)
                if failing:
                    log.info("history_flush_recovered")
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("history_flush_failed", error=str(exc) or type(exc).__name__)
                failing = True
            if stop.is_set():
                return
