"""Replica-count sync: the cluster's desired and ready replicas of each component, copied into Redis.

On Kubernetes, KEDA's HPA (not tiffin's local autoscaler) sets each Deployment's spec.replicas, and the kubelet
decides readiness. The controller watches the Deployments it manages and writes both into tiffin's shared
state (`write_desired`, `write_cluster_ready`), so `tiffin status` and the dashboard show the cluster's truth.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tiffin.common.backoff import Backoff
from tiffin.contracts import keys
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


OnCounts = Callable[[str, dict[keys.Component, Counts]], Awaitable[None]]
OnDeleted = Callable[[str], Awaitable[None]]


class ReplicaSync:
    """Watch handler for the managed Deployments: keeps the counts, writes them to Redis, reports changes."""

    def __init__(self, redis: Redis, on_counts: OnCounts | None = None, on_deleted: OnDeleted | None = None) -> None:
        self.redis = redis
        self.on_counts = on_counts
        self.on_deleted = on_deleted
        self.counts: dict[str, dict[keys.Component, Counts]] = {}
        self._redis_backoff = Backoff("replica sync")

    async def synced(self, items: list[dict[str, Any]]) -> None:
        for obj in items:
            await self.changed("ADDED", obj)

    async def changed(self, kind: str, obj: dict[str, Any]) -> None:
        found = counts_of(obj)
        if found is None:
            return
        name, component, counts = found
        if kind == "DELETED":
            counts = Counts(0, 0)
            if self.on_deleted is not None:
                await self.on_deleted(name)
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
            except (RedisError, OSError) as exc:
                await self._redis_backoff.failed(exc)
                continue
            self._redis_backoff.succeeded()
            log.info("replicas_synced", deployment=name, component=component, desired=counts.desired,
                     ready=counts.ready)  # fmt: skip
            return True
        return False
