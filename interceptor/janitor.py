"""Every interceptor sweeps the queues now and then for requests whose interceptor died."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from interceptor import metrics
from tiffin.contracts.config import Deployment
from tiffin.contracts.orphans import withdraw_orphans

log = structlog.get_logger("interceptor.janitor")


async def sweep(redis: Redis, deployments: list[Deployment], own_reply: str) -> None:
    """One pass over every deployment's queue, each withdrawal logged and counted."""
    for deployment in deployments:
        for w in await withdraw_orphans(redis, deployment.name, own_reply=own_reply):
            metrics.WITHDRAWN.labels(deployment.name, w.reason).inc()
            log.warning("request_withdrawn", deployment=deployment.name, request_id=w.request_id,
                        reason=w.reason, in_flight=w.in_flight)  # fmt: skip


async def sweep_forever(
    redis: Redis, deployments: list[Deployment], own_reply: str, interval_s: float, stop: asyncio.Event
) -> None:
    """Sweep at once (a restarted interceptor cleans up after its previous life), then every `interval_s`."""
    while not stop.is_set():
        try:
            await sweep(redis, deployments, own_reply)
        except (RedisError, OSError) as exc:  # the next pass retries; nothing is lost by a late sweep
            log.warning("sweep_failed", error=str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
