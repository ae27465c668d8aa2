"""The local autoscaler against the real scaler process (KEDA's protocol) and real Redis.

`RecordingBackend` is the test double: it stands where local processes or a Kubernetes Deployment's scale
subresource would be, and records the counts it is told to run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from tests.e2e.conftest import write_deployment
from tests.interceptor.conftest import eventually
from tests.scaler.conftest import Scaler, start_scaler
from tests.tiffin.contracts.test_queue import envelope
from tiffin.contracts import keys
from tiffin.contracts.config import Deployment, load_deployments
from tiffin.contracts.dashboard import read_series
from tiffin.contracts.load import LoadReport, RunnerLoad
from tiffin.contracts.queue import DeploymentQueue
from tiffin.contracts.registry import Registry
from tiffin.contracts.status import read_status
from tiffin.local.autoscaler import Autoscaler, ComponentAutoscaler
from tiffin.local.redis_server import EmbeddedRedis
from tiffin.local.scaler_client import ScalerClient


class RecordingBackend:
    """Test double for the replica backend: remembers every scale call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.changed = asyncio.Event()

    async def scale(self, deployment: Deployment, component: keys.Component, replicas: int) -> None:
        self.calls.append((deployment.name, component, replicas))
        self.changed.set()

    def last(self, deployment: str, component: str) -> int | None:
        counts = [n for d, c, n in self.calls if (d, c) == (deployment, component)]
        return counts[-1] if counts else None

    async def wait_for(self, deployment: str, component: str, replicas: int, timeout_s: float = 10) -> None:
        async with asyncio.timeout(timeout_s):
            while self.last(deployment, component) != replicas:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture(scope="module")
def deployments_and_scaler(
    tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis
) -> Iterator[tuple[list[Deployment], Scaler]]:
    folder = tmp_path_factory.mktemp("autoscaler")
    scaled = {"api": {"concurrency": 4, "max_replicas": 3}, "runner": {"concurrency": 2, "max_replicas": 2}}
    configs = [
        write_deployment(folder, "lazy", **scaled, scaling={"idle_period_s": 0, "scale_down_window_s": 1}),
        write_deployment(folder, "kept", api={"min_replicas": 1}, scaling={"idle_period_s": 0}),
        write_deployment(folder, "other", **scaled, scaling={"idle_period_s": 0}),
        write_deployment(folder, "sleepy", scaling={"idle_period_s": 0, "sleep_period_s": 1}),
    ]
    # Poll interval far above the waits below: only pushed activation can pass the first test.
    scaler = start_scaler(folder, redis_server.url, configs, poll_s=60, name="autoscaler-scaler")
    scaler.wait_health()
    yield load_deployments(configs), scaler
    scaler.proc.stop()


@pytest.fixture
async def client(deployments_and_scaler: tuple[list[Deployment], Scaler]) -> AsyncIterator[ScalerClient]:
    scaler_client = ScalerClient(deployments_and_scaler[1].address)
    yield scaler_client
    await scaler_client.close()


def by_name(deployments: list[Deployment], name: str) -> Deployment:
    return next(d for d in deployments if d.name == name)


async def test_a_request_at_zero_wakes_both_components_by_push(
    redis: Redis, client: ScalerClient, deployments_and_scaler: tuple[list[Deployment], Scaler]
) -> None:
    deployments = deployments_and_scaler[0]
    backend = RecordingBackend()
    said: list[str] = []
    stop = asyncio.Event()
    # A 60 s tick: without the pushed stream message nothing would happen within the wait below.
    task = asyncio.create_task(Autoscaler(client, deployments, backend, redis, said.append, tick_s=60).run(stop))
    try:
        await backend.wait_for("kept", "api", 1)  # min_replicas is honoured at start
        assert backend.last("lazy", "api") is None
        assert (await read_status(redis, by_name(deployments, "lazy"))).api.desired == 0

        await DeploymentQueue(redis, "lazy").admit(envelope("r1"), max_waiting=10, ttl_s=60)

        await backend.wait_for("lazy", "api", 1)
        await backend.wait_for("lazy", "runner", 1)
        assert backend.last("other", "api") is None  # untouched
        assert "lazy api: 0 -> 1 replicas (activation: a request is waiting)" in said
        lazy = await read_status(redis, by_name(deployments, "lazy"))
        assert (lazy.api.desired, lazy.runner.desired) == (1, 1)
    finally:
        stop.set()
        await task


async def test_replicas_follow_the_hpa_formula_and_shed_only_after_the_window(
    redis: Redis, client: ScalerClient, deployments_and_scaler: tuple[list[Deployment], Scaler]
) -> None:
    lazy = by_name(deployments_and_scaler[0], "lazy")
    backend = RecordingBackend()
    api = ComponentAutoscaler(client, lazy, "api", backend, redis, lambda _: None)
    runner = ComponentAutoscaler(client, lazy, "runner", backend, redis, lambda _: None)
    queue = DeploymentQueue(redis, "lazy")
    admitted = [await queue.admit(envelope(f"r{i}"), max_waiting=100, ttl_s=60) for i in range(10)]
    await RunnerLoad(redis, "lazy", ttl_s=60).report("api-1", LoadReport(waiting=1, runners={"runner-1": 2}))

    await api.step()
    await runner.step()
    assert backend.last("lazy", "api") == 3  # ceil(10 / 4)
    assert backend.last("lazy", "runner") == 2  # ceil(3 / 2)

    for i, admission in enumerate(admitted[:8]):
        await queue.cancel(f"r{i}", admission.entry_id, even_if_taken=False)
    await api.step()
    assert api.replicas == 3  # 2 waiting wants 1, but the 1 s window still remembers 3
    shed_after = time.monotonic() + lazy.scaling.scale_down_window_s
    while time.monotonic() <= shed_after:
        await asyncio.sleep(0.1)  # the window is measured in time; nothing else to await
    await api.step()
    assert backend.last("lazy", "api") == 1


async def test_an_idle_deployment_goes_to_min_replicas(
    redis: Redis, client: ScalerClient, deployments_and_scaler: tuple[list[Deployment], Scaler]
) -> None:
    kept = by_name(deployments_and_scaler[0], "kept")
    backend = RecordingBackend()
    api = ComponentAutoscaler(client, kept, "api", backend, redis, lambda _: None)
    runner = ComponentAutoscaler(client, kept, "runner", backend, redis, lambda _: None)
    queue = DeploymentQueue(redis, "kept")
    admission = await queue.admit(envelope("r1"), max_waiting=10, ttl_s=60)
    await api.step()
    await runner.step()
    assert (api.replicas, runner.replicas) == (1, 1)

    await queue.cancel("r1", admission.entry_id, even_if_taken=False)  # nothing waits; idle period 0
    await api.step()
    await runner.step()
    assert (api.replicas, runner.replicas) == (1, 0)  # api keeps its min_replicas, the runner goes to zero


async def test_the_autoscaler_records_ready_and_desired_replicas_in_the_history(
    redis: Redis, client: ScalerClient, deployments_and_scaler: tuple[list[Deployment], Scaler]
) -> None:
    kept = by_name(deployments_and_scaler[0], "kept")
    await Registry(redis, "kept", "api", ttl_s=60).register("kept-api-1", {"url": "http://kept", "concurrency": 4})
    api = ComponentAutoscaler(client, kept, "api", RecordingBackend(), redis, lambda _: None, tick_s=60)
    stop = asyncio.Event()
    task = asyncio.create_task(api.run(stop))

    async def recorded() -> bool:
        series = await read_series(redis, "kept", time.time())
        points = zip(series["api_ready"][-2:], series["api_desired"][-2:], strict=True)  # a step may just have ended
        return (1, 1) in points  # min_replicas 1, one registered

    try:
        await eventually(recorded)
    finally:
        stop.set()
        await task


async def test_idle_gpu_runners_sleep_first_wake_on_a_request_and_reach_zero_after_the_sleep_period(
    redis: Redis, client: ScalerClient, deployments_and_scaler: tuple[list[Deployment], Scaler]
) -> None:
    sleepy = by_name(deployments_and_scaler[0], "sleepy")
    backend = RecordingBackend()
    said: list[str] = []
    runner = ComponentAutoscaler(client, sleepy, "runner", backend, redis, said.append)
    queue = DeploymentQueue(redis, "sleepy")
    admission = await queue.admit(envelope("s1"), max_waiting=10, ttl_s=60)
    await runner.step()
    assert runner.replicas == 1

    await queue.cancel("s1", admission.entry_id, even_if_taken=False)  # idle (idle period 0)
    await runner.step()
    assert runner.replicas == 1 and await redis.exists(keys.sleep("sleepy"))  # asleep, not stopped
    assert any("1 replica(s) asleep" in line for line in said)

    admission = await queue.admit(envelope("s2"), max_waiting=10, ttl_s=60)
    await runner.step()
    assert runner.replicas == 1 and not await redis.exists(keys.sleep("sleepy"))  # woken, not started
    assert backend.calls == [("sleepy", "runner", 1)]  # one start in all: the wake is not a cold start

    await queue.cancel("s2", admission.entry_id, even_if_taken=False)
    await runner.step()
    assert await redis.exists(keys.sleep("sleepy"))
    asleep_until = time.monotonic() + (sleepy.scaling.sleep_period_s or 0)
    while time.monotonic() <= asleep_until:
        await asyncio.sleep(0.1)  # the sleep period is measured in time; nothing else to await
    await runner.step()
    assert backend.last("sleepy", "runner") == 0 and not await redis.exists(keys.sleep("sleepy"))
