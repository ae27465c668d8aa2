"""Fixtures: the Kubernetes API test double on a real socket, clients of it, and controllers to start and stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio.client import Configuration
from redis.asyncio import Redis

from tests.kube.controller.apiserver import FakeApiServer
from tiffin.kube.controller.kubeapi import KubeApi, Resource
from tiffin.kube.controller.leader import LeaderElector
from tiffin.kube.controller.reconcile import GROUP_VERSION
from tiffin.kube.controller.run import Controller
from tiffin.kube.render import Platform

NAMESPACE = "tiffin"
RESOURCES = Resource(GROUP_VERSION, "tiffindeployments", NAMESPACE)
LEASES = Resource("coordination.k8s.io/v1", "leases", NAMESPACE)
DEADLINE_S = 30.0


async def eventually(check: Callable[[], Awaitable[Any]], what: str, deadline_s: float = DEADLINE_S) -> Any:
    """Poll `check` (state another task owns, over HTTP or Redis) until it returns something truthy."""
    try:
        async with asyncio.timeout(deadline_s):
            while True:
                found = await check()
                if found:
                    return found
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {deadline_s:g}s: {what}") from None


@dataclass
class Cluster:
    """The double and a client of it (what `kubectl` would be in a real walk-through)."""

    fake: FakeApiServer
    url: str
    api: KubeApi
    clients: list[KubeApi] = field(default_factory=list)

    def client(self) -> KubeApi:
        api = KubeApi(Configuration(host=self.url), request_timeout_s=10)
        self.clients.append(api)
        return api

    async def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": GROUP_VERSION, "kind": "TiffinDeployment",
                "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}  # fmt: skip
        return await self.api.request("POST", RESOURCES.path(), body=body)

    async def get(self, name: str) -> dict[str, Any] | None:
        return await self.api.get(RESOURCES, name)

    async def condition(self, name: str, kind: str) -> dict[str, Any] | None:
        resource = await self.get(name)
        conditions = ((resource or {}).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == kind), None)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    fake = FakeApiServer()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    cluster = Cluster(fake, f"http://127.0.0.1:{port}", None)  # type: ignore[arg-type]
    cluster.api = cluster.client()
    yield cluster
    fake.drop_watches()
    for api in cluster.clients:
        await api.close()
    await runner.cleanup()


@dataclass
class Running:
    """A controller process, as far as the test can tell: its task and the handles to stop or crash it."""

    controller: Controller
    stop_event: asyncio.Event
    task: asyncio.Task[None]

    async def stop(self) -> None:
        """A clean stop (SIGTERM): the lease is released."""
        self.stop_event.set()
        await asyncio.wait_for(self.task, DEADLINE_S)

    async def crash(self) -> None:
        """Gone without a word (SIGKILL): the lease stays until it expires."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    @property
    def leading(self) -> bool:
        return self.controller.elector.is_leader


StartController = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_controller(cluster: Cluster, redis: Redis) -> AsyncIterator[StartController]:
    running: list[Running] = []

    async def start(
        identity: str = "controller-a",
        lease_duration_s: float = 2.0,
        renew_s: float = 0.4,
        watch_timeout_s: int = 5,
        resync_s: float = 600.0,
        history_every_s: float = 5.0,
    ) -> Running:
        api = cluster.client()
        elector = LeaderElector(api, NAMESPACE, "tiffin-controller", identity, lease_duration_s, renew_s)
        platform = Platform(namespace=NAMESPACE)
        controller = Controller(api, redis, platform, elector, watch_timeout_s, resync_s, history_every_s)
        stop = asyncio.Event()
        handle = Running(controller, stop, asyncio.create_task(controller.run(stop), name=f"controller-{identity}"))
        running.append(handle)
        return handle

    yield start
    for handle in running:
        if not handle.task.done():
            await handle.stop()
