"""The controller as a whole: while leading, one watch of TiffinDeployments and one of their workloads."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from redis.asyncio import Redis

from tiffin.kube.controller.kubeapi import KubeApi, Resource
from tiffin.kube.controller.leader import LeaderElector
from tiffin.kube.controller.reconcile import Reconciler
from tiffin.kube.controller.replicas import MANAGED, ReplicaSync
from tiffin.kube.controller.watch import Watcher
from tiffin.kube.render import Platform

log = structlog.get_logger("tiffin.kube.controller")


class Controller:
    """Leader election around the reconcile watch and the replica-count watch."""

    def __init__(
        self,
        api: KubeApi,
        redis: Redis,
        platform: Platform,
        elector: LeaderElector,
        watch_timeout_s: int = 300,
        resync_s: float = 600.0,
        history_every_s: float = 5.0,
    ) -> None:
        self.api = api
        self.redis = redis
        self.platform = platform
        self.elector = elector
        self.watch_timeout_s = watch_timeout_s
        self.resync_s = resync_s
        self.history_every_s = history_every_s
        self.reconciler: Reconciler | None = None  # the current term's (tests read its state)
        self.watchers: list[Watcher] = []

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign, lead, and step down until `stop` is set."""
        await self.elector.run(self._lead, stop)

    async def _lead(self, term: asyncio.Event) -> None:
        # A fresh reconciler each term: a new leader trusts nothing it knew before; its first list reconciles all.
        reconciler = Reconciler(self.api, self.platform)
        sync = ReplicaSync(self.redis, on_counts=reconciler.counts_changed, on_deleted=reconciler.workload_deleted)
        workloads = Resource("apps/v1", "deployments", self.platform.namespace)
        self.reconciler = reconciler
        self.watchers = [
            Watcher(
                self.api, reconciler.resources, reconciler, watch_timeout_s=self.watch_timeout_s, resync_s=self.resync_s
            ),
            Watcher(self.api, workloads, sync, label_selector=MANAGED, watch_timeout_s=self.watch_timeout_s),
        ]
        tasks = [asyncio.create_task(w.run(term), name=f"watch-{w.resource.plural}") for w in self.watchers]
        tasks.append(asyncio.create_task(sync.record_history(term, self.history_every_s), name="replica-history"))
        ended = asyncio.create_task(term.wait(), name="term")
        try:
            await asyncio.wait([*tasks, ended], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in [*tasks, ended]:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task  # a watch that failed for a bug raises here: the process exits, its pod restarts
            with contextlib.suppress(asyncio.CancelledError):
                await ended
