"""Replica-count sync: the cluster's desired and ready replicas of each component, copied into Redis.

On Kubernetes, KEDA's HPA (not tiffin's local autoscaler) sets each Deployment's spec.replicas, and the kubelet
decides readiness. The controller watches the Deployments it manages and writes both into tiffin's shared
state (`write_desired`, `write_cluster_ready`), so `tiffin status` and the dashboard show the cluster's truth.
It is the scaling writer's part the local autoscaler plays under `tiffin up`: the dashboard's replica history
(`record_replicas`, on every change and every few seconds so each 10 s step has a sample) and the cold start's
`replica_started` phase (see `pods_of`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tiffin.common.backoff import Backoff
from tiffin.contracts import coldstart, keys
from tiffin.contracts.history import record_replicas
from tiffin.contracts.status import write_cluster_ready, write_desired
from tiffin.kube.controller.conditions import Counts

log = structlog.get_logger("tiffin.kube.controller.replicas")

LABEL_DEPLOYMENT = "tiffin.io/deployment"
LABEL_COMPONENT = "app.kubernetes.io/component"
MANAGED = "app.kubernetes.io/managed-by=tiffin"
"""Label selector of everything the controller manages."""


def counts_of(obj: dict[str, Any]) -> tuple[str, keys.Component, Counts] | None:
    """(tiffin deployment, component, counts) of a workload Deployment; None for one that is not a component."""
    labels = obj.get("metadata", {}).get("labels") or {}
    name, component = labels.get(LABEL_DEPLOYMENT), labels.get(LABEL_COMPONENT)
    if not name or component not in keys.COMPONENTS:
        return None
    desired = int(obj.get("spec", {}).get("replicas", 1))  # the API server's own default when unset
    ready = int((obj.get("status") or {}).get("readyReplicas") or 0)
    return name, component, Counts(desired, ready)


def pods_of(obj: dict[str, Any]) -> int:
    """How many pods a workload Deployment has (status.replicas: created by its ReplicaSet, ready or not).

    On Kubernetes, `replica_started` is marked when this goes from 0 to more for a component: the first pod of a
    deployment that had none exists (KEDA's HPA scaled it up and the ReplicaSet created the pod; it may still be
    waiting for a node, pulling its image or loading its model, which the later phases time). Under `tiffin up`
    the same phase is the local autoscaler starting the first process.
    """
    return int((obj.get("status") or {}).get("replicas") or 0)


OnCounts = Callable[[str, dict[keys.Component, Counts]], Awaitable[None]]
OnDeleted = Callable[[str], Awaitable[None]]


class ReplicaSync:
    """Watch handler for the managed Deployments: keeps the counts, writes them to Redis, reports changes."""

    def __init__(self, redis: Redis, on_counts: OnCounts | None = None, on_deleted: OnDeleted | None = None) -> None:
        self.redis = redis
        self.on_counts = on_counts
        self.on_deleted = on_deleted
        self.counts: dict[str, dict[keys.Component, Counts]] = {}
        self._pods: dict[tuple[str, keys.Component], int] = {}  # pods per component, once seen
        self._redis_backoff = Backoff("replica sync")

    async def synced(self, items: list[dict[str, Any]]) -> None:
        for obj in items:
            await self.changed("ADDED", obj)

    async def changed(self, kind: str, obj: dict[str, Any]) -> None:
        found = counts_of(obj)
        if found is None:
            return
        name, component, counts = found
        pods = pods_of(obj)
        if kind == "DELETED":
            counts, pods = Counts(0, 0), 0
            if self.on_deleted is not None:
                await self.on_deleted(name)
        before = self._pods.get((name, component))
        self._pods[(name, component)] = pods
        # Only a change seen from a known zero: after a (re)list nothing says the pods were just created.
        if before == 0 and pods > 0:
            await coldstart.note(self.redis, name, "replica_started")
        if kind == "DELETED":
            self._pods.pop((name, component), None)  # no more history samples for a workload that is gone
        per = self.counts.setdefault(name, {})
        if per.get(component) == counts:
            return
        per[component] = counts
        if not await self._write(name, component, counts):
            del per[component]  # not in Redis: the next event about it writes again
        if self.on_counts is not None:
            await self.on_counts(name, dict(per))

    async def _write(self, name: str, component: keys.Component, counts: Counts) -> bool:
        # Redis down must not stall the watch for long: retry a few times, then let the next change rewrite it.
        for _ in range(5):
            try:
                await write_desired(self.redis, name, component, counts.desired)
                await write_cluster_ready(self.redis, name, component, counts.ready)
                await record_replicas(self.redis, name, component, counts.ready, counts.desired)
            except (RedisError, OSError) as exc:
                await self._redis_backoff.failed(exc)
                continue
            self._redis_backoff.succeeded()
            log.info("replicas_synced", deployment=name, component=component, desired=counts.desired,
                     ready=counts.ready)  # fmt: skip
            return True
        return False

    async def record_history(self, stop: asyncio.Event, every_s: float = 5.0) -> None:
        """Sample every live workload's counts into the dashboard's history until `stop` (a watch reports only
        changes, and a 10 s step without a sample would be a gap in the chart)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every_s):
                    await stop.wait()
            for name, component in list(self._pods):
                counts = self.counts.get(name, {}).get(component)
                if counts is None:
                    continue
                try:
                    await record_replicas(self.redis, name, component, counts.ready, counts.desired)
                except (RedisError, OSError) as exc:  # the next sample tries again; the watch must not stall
                    log.warning("history_not_recorded", deployment=name, component=component, error=str(exc))
                    break
