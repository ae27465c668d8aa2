"""Per-deployment status: what `tiffin status` and the admin port's `GET /api/status` report.

State: `warm` (an API server and a runner are ready), `waking` (not warm, and requests wait or run, or more
replicas are wanted than are ready), `idle` (otherwise: at rest, at zero or at min_replicas).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from redis.asyncio import Redis

from tiffin.contracts import keys
from tiffin.contracts.coldstart import ColdStart, recent_cold_starts
from tiffin.contracts.config import Deployment
from tiffin.contracts.demand import read_demand
from tiffin.contracts.queue import DeploymentQueue, now_ms
from tiffin.contracts.registry import Registry

State = Literal["idle", "waking", "warm"]


@dataclass(frozen=True)
class ComponentStatus:
    """Replica counts of one component: wanted by the scaling writer, and ready (registered, heartbeating).

    `cluster_ready` is the cluster's own count of ready pods (Kubernetes), None when no cluster reports one.
    """

    desired: int | None
    ready: int
    min_replicas: int
    max_replicas: int
    cluster_ready: int | None = None


@dataclass(frozen=True)
class DeploymentStatus:
    name: str
    state: State
    api: ComponentStatus
    runner: ComponentStatus
    queued: int
    in_flight: int
    runner_load: int
    oldest_waiting_s: float | None
    idle_s: float | None
    last_cold_start_s: float | None
    """The last finished cold start's duration (arrival to first byte)."""
    last_cold_start_at_ms: int | None
    """When the last finished cold start ended (epoch ms)."""
    last_cold_start: ColdStart | None
    """The last cold start with its phases, finished or failed (`ColdStart.to_json()` in the JSON)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def write_desired(redis: Redis, deployment: str, component: keys.Component, replicas: int) -> None:
    """Record the count the single scaling writer wants (for status; the writer itself acts on it)."""
    await redis.hset(keys.desired(deployment), mapping={component: replicas, "updated_ms": now_ms()})


async def write_cluster_ready(redis: Redis, deployment: str, component: keys.Component, replicas: int) -> None:
    """Record the ready replicas the cluster reports (the Kubernetes controller, from status.readyReplicas)."""
    await redis.hset(keys.cluster_ready(deployment), mapping={component: replicas, "updated_ms": now_ms()})


async def read_status(redis: Redis, deployment: Deployment) -> DeploymentStatus:
    """One deployment's status, from Redis alone (any interceptor or CLI can answer it)."""
    demand = await read_demand(redis, deployment)
    ready = {c: len(await Registry(redis, deployment.name, c).ready()) for c in keys.COMPONENTS}
    desired_raw: Any = await redis.hgetall(keys.desired(deployment.name))
    cluster_raw: Any = await redis.hgetall(keys.cluster_ready(deployment.name))
    cold: Any = await redis.hgetall(keys.cold_start(deployment.name))
    woke = bool(await redis.exists(keys.waking(deployment.name)))
    oldest = await DeploymentQueue(redis, deployment.name).oldest_waiting_ms()
    last = await recent_cold_starts(redis, deployment.name, limit=1)

    def component(name: keys.Component) -> ComponentStatus:
        spec = deployment.component(name)
        raw, cluster = desired_raw.get(name.encode()), cluster_raw.get(name.encode())
        return ComponentStatus(int(raw) if raw is not None else None, ready[name], spec.min_replicas, spec.max_replicas,
                               int(cluster) if cluster is not None else None)  # fmt: skip

    api, runner = component("api"), component("runner")
    state: State
    if api.ready > 0 and runner.ready > 0:
        state = "warm"
    elif demand.busy or woke or any((c.desired or 0) > c.ready for c in (api, runner)):
        state = "waking"
    else:
        state = "idle"
    idle = demand.idle_s()
    return DeploymentStatus(
        name=deployment.name,
        state=state,
        api=api,
        runner=runner,
        queued=demand.waiting,
        in_flight=demand.in_flight,
        runner_load=demand.runner_load,
        oldest_waiting_s=None if oldest is None else max(0.0, (demand.at_ms - oldest) / 1000),
        idle_s=None if idle == float("inf") else round(idle, 1),
        last_cold_start_s=int(cold[b"duration_ms"]) / 1000 if b"duration_ms" in cold else None,
        last_cold_start_at_ms=int(cold[b"at_ms"]) if b"at_ms" in cold else None,
        last_cold_start=last[0] if last else None,
    )
