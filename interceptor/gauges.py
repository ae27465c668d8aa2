"""Gauges read from Redis at scrape time: what every deployment looks like now (replicas, state, queue).

They are shared facts, not this interceptor's own, so every interceptor reports the same values; a Prometheus
query should take `max` over interceptors rather than `sum`. If Redis cannot be read, the scrape still answers
with the interceptor's own metrics and these gauges are left out (absent, not zero).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tiffin.contracts import keys
from tiffin.contracts.config import Deployment
from tiffin.contracts.status import DeploymentStatus, read_statuses

log = structlog.get_logger("interceptor")

STATES = ("idle", "sleeping", "waking", "warm")


class _Snapshot(Collector):
    """Exposes one reading of the deployments' statuses."""

    def __init__(self, statuses: Sequence[DeploymentStatus], deployments: Sequence[Deployment]) -> None:
        self.statuses = statuses
        self.gpus = {d.name: d.runner.gpus > 0 for d in deployments}

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            "tiffin_replicas_ready", "Replicas registered and heartbeating.", labels=["deployment", "component"]
        )
        desired = GaugeMetricFamily(
            "tiffin_replicas_desired", "Replicas the scaling writer wants.", labels=["deployment", "component"]
        )
        state = GaugeMetricFamily(
            "tiffin_deployment_state", "1 for the deployment's current state, 0 for the others.",
            labels=["deployment", "state"],
        )  # fmt: skip
        queue = GaugeMetricFamily(
            "tiffin_queue_requests", "Requests waiting for a replica, and in flight at API servers.",
            labels=["deployment", "state"],
        )  # fmt: skip
        oldest = GaugeMetricFamily(
            "tiffin_queue_oldest_wait_seconds", "Age of the oldest waiting request (0 when none waits).",
            labels=["deployment"],
        )  # fmt: skip
        last = GaugeMetricFamily(
            "tiffin_last_request_timestamp_seconds", "When the deployment last took or finished a request.",
            labels=["deployment"],
        )  # fmt: skip
        gpu = GaugeMetricFamily("tiffin_gpu_runners_ready", "Ready runners of deployments whose runners use GPUs.")
        gpu_ready = 0
        for s in self.statuses:
            for component in keys.COMPONENTS:
                counts = s.api if component == "api" else s.runner
                ready.add_metric([s.name, component], counts.ready)
                if counts.desired is not None:
                    desired.add_metric([s.name, component], counts.desired)
            for name in STATES:
                state.add_metric([s.name, name], 1 if s.state == name else 0)
            queue.add_metric([s.name, "waiting"], s.queued)
            queue.add_metric([s.name, "in_flight"], s.in_flight)
            oldest.add_metric([s.name], s.oldest_waiting_s or 0.0)
            if s.last_activity_ms is not None:
                last.add_metric([s.name], s.last_activity_ms / 1000)
            if self.gpus.get(s.name):
                gpu_ready += s.runner.ready
        gpu.add_metric([], gpu_ready)
        yield from (ready, desired, state, queue, oldest, last, gpu)


def families() -> dict[str, str]:
    """The gauge families read from Redis at scrape time (name -> type), for checks of dashboards against them."""
    return {f.name: f.type for f in _Snapshot([], []).collect()}


async def exposition(redis: Redis, deployments: Sequence[Deployment], timeout_s: float) -> bytes:
    """The Redis-read gauges in Prometheus' text format; empty (and logged) when Redis does not answer."""
    try:
        async with asyncio.timeout(timeout_s):
            statuses = await read_statuses(redis, deployments)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("metrics_redis_unreachable", error=str(exc) or type(exc).__name__)
        return b""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(statuses, deployments))
    return generate_latest(registry)
