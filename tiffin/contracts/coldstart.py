"""Cold-start records (a stand-in with the dashboard contract's names; the `coldphases` helper owns the real one).

Each finished or failed cold start is one JSON entry in the bounded list `tiffin:cold-starts:{deployment}`,
newest first. Only what the dashboard reads is here: the record's shape and `recent_cold_starts`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from redis.asyncio import Redis

from tiffin.contracts import keys

Phase = Literal["activated", "replica_started", "api_ready", "engine_ready", "dispatched", "first_byte"]
PHASES: tuple[Phase, ...] = ("activated", "replica_started", "api_ready", "engine_ready", "dispatched", "first_byte")

MAX_RECORDS = 100


def cold_starts_key(deployment: str) -> str:
    """The bounded list of a deployment's cold starts, newest first."""
    return f"{keys.PREFIX}:cold-starts:{deployment}"


@dataclass(frozen=True)
class ColdStart:
    """One cold start: when its waking request arrived, and how long each phase took from then."""

    request_id: str
    at_ms: int
    total_ms: float | None
    phases: dict[str, float] = field(default_factory=dict)
    outcome: Literal["ok", "failed"] = "ok"

    def to_json(self) -> dict[str, Any]:
        """The record as stored and as served by the admin API."""
        return {
            "request_id": self.request_id,
            "at_ms": self.at_ms,
            "total_ms": self.total_ms,
            "phases": dict(self.phases),
            "outcome": self.outcome,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ColdStart:
        """Parse what `to_json` wrote."""
        total = data.get("total_ms")
        outcome: Literal["ok", "failed"] = "failed" if data.get("outcome") == "failed" else "ok"
        return cls(
            request_id=str(data["request_id"]),
            at_ms=int(data["at_ms"]),
            total_ms=None if total is None else float(total),
            phases={str(k): float(v) for k, v in dict(data.get("phases") or {}).items()},
            outcome=outcome,
        )


async def recent_cold_starts(redis: Redis, deployment: str, limit: int = 20) -> list[ColdStart]:
    """The deployment's last `limit` cold starts, newest first."""
    raw: Any = await redis.lrange(cold_starts_key(deployment), 0, limit - 1)
    return [ColdStart.from_json(json.loads(item)) for item in raw]
