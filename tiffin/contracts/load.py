"""Runner load: each API server reports what it has at runners; the scaler sums the live reports.

A report expires unless refreshed, so an API server that dies stops counting after its TTL (no counter to leak).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from tiffin.contracts import keys
from tiffin.contracts.registry import ExpiringMap


@dataclass(frozen=True)
class LoadReport:
    """One API server's requests for runners: waiting for a slot, and in flight per runner id."""

    waiting: int = 0
    runners: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.waiting + sum(self.runners.values())

    def to_info(self) -> dict[str, Any]:
        return {"waiting": self.waiting, "runners": dict(self.runners)}

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> LoadReport:
        return cls(int(info.get("waiting", 0)), {str(k): int(v) for k, v in dict(info.get("runners", {})).items()})


class RunnerLoad:
    """The live load reports of one deployment's API servers."""

    def __init__(self, redis: Redis, deployment: str, ttl_s: float = 10.0) -> None:
        self.deployment = deployment
        self._map = ExpiringMap(redis, keys.runner_load(deployment), keys.runner_load_values(deployment), ttl_s)

    async def report(self, api_replica: str, report: LoadReport) -> None:
        """Replace this API server's report; it lapses after the TTL unless reported again."""
        await self._map.register(api_replica, report.to_info())

    async def withdraw(self, api_replica: str) -> None:
        await self._map.deregister(api_replica)

    async def reports(self) -> dict[str, LoadReport]:
        return {rid: LoadReport.from_info(info) for rid, info in (await self._map.ready()).items()}

    async def total(self) -> int:
        """Requests in flight at runners plus those waiting at API servers for a runner slot."""
        return sum(r.total for r in (await self.reports()).values())

    async def at_runner(self, runner_id: str) -> int:
        """Requests in flight at one runner, over all API servers (a draining runner waits for 0)."""
        return sum(r.runners.get(runner_id, 0) for r in (await self.reports()).values())
