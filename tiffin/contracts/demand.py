"""A deployment's demand, read from Redis: what the scaler reports to KEDA and what status shows.

api metric: requests waiting + in flight at API servers; runner metric: requests in flight at runners plus
those waiting at API servers for a runner slot. Every input is either a queue entry or an expiring report,
so a crashed interceptor, proxy or API server cannot leave a count behind.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from tiffin.contracts import keys
from tiffin.contracts.config import Deployment
from tiffin.contracts.load import RunnerLoad
from tiffin.contracts.queue import DeploymentQueue, now_ms


@dataclass(frozen=True)
class Demand:
    """One deployment's load at one moment."""

    deployment: str
    waiting: int
    in_flight: int
    runner_load: int
    last_activity_ms: int | None
    at_ms: int

    def metric(self, component: keys.Component) -> int:
        """The value KEDA's HPA divides by the component's target."""
        return self.waiting + self.in_flight if component == "api" else self.runner_load

    @property
    def busy(self) -> bool:
        return self.waiting > 0 or self.in_flight > 0 or self.runner_load > 0

    def idle_s(self) -> float:
        """Seconds since the last enqueue or finished request (0 while busy)."""
        if self.busy or self.last_activity_ms is None:
            return 0.0 if self.busy else float("inf")
        return max(0.0, (self.at_ms - self.last_activity_ms) / 1000)

    def active(self, idle_period_s: float) -> bool:
        """Replicas are wanted: something waits or runs, or the idle period has not passed yet."""
        return self.busy or self.idle_s() < idle_period_s


async def read_demand(redis: Redis, deployment: Deployment) -> Demand:
    """Read the queue, the runner load reports and the activity mark of one deployment."""
    waiting, in_flight = await DeploymentQueue(redis, deployment.name).depth()
    runner_load = await RunnerLoad(redis, deployment.name).total()
    raw = await redis.get(keys.activity(deployment.name))
    return Demand(
        deployment=deployment.name,
        waiting=waiting,
        in_flight=in_flight,
        runner_load=runner_load,
        last_activity_ms=int(raw) if raw is not None else None,
        at_ms=now_ms(),
    )
