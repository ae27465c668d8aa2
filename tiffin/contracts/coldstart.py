"""Cold-start records (a stand-in with the dashboard contract's names; the `coldphases` helper owns the real one).

Each finished or failed cold start is one JSON entry in the bounded list `keys.cold_starts`, newest first. Only
what the dashboard and `tiffin status` read is here: the record's shape, its one-line description, and
`recent_cold_starts`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from redis.asyncio import Redis

from tiffin.contracts import keys

Phase = Literal["activated", "replica_started", "api_ready", "engine_ready", "dispatched", "first_byte"]
PHASES: tuple[Phase, ...] = ("activated", "replica_started", "api_ready", "engine_ready", "dispatched", "first_byte")
PHASE_LABELS: dict[str, str] = {
    "activated": "activated",
    "replica_started": "replica started",
    "api_ready": "API ready",
    "engine_ready": "engine ready",
    "dispatched": "dispatched",
    "first_byte": "first byte",
}
Outcome = Literal["ok", "failed"]

MAX_RECORDS = 100
"""Cold starts kept per deployment."""


@dataclass(frozen=True)
class ColdStart:
    """One cold start: when its waking request arrived, and each phase seen, in ms since then."""

    request_id: str
    at_ms: int
    """Epoch ms the waking request arrived: phase 0."""
    total_ms: float | None
    """Arrival to first byte; None when it did not finish."""
    phases: dict[str, float] = field(default_factory=dict)
    """Phase -> ms since arrival, only the phases that were seen, in `PHASES` order."""
    outcome: Outcome = "ok"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ColdStart:
        """The record as stored or served; unknown phases are dropped, the rest ordered as `PHASES`."""
        raw = data.get("phases") or {}
        phases: dict[str, float] = {p: float(raw[p]) for p in PHASES if raw.get(p) is not None}
        total = data.get("total_ms")
        outcome: Outcome = "ok" if data.get("outcome") == "ok" else "failed"
        return cls(str(data["request_id"]), int(data["at_ms"]), None if total is None else float(total), phases,
                   outcome)  # fmt: skip

    def describe(self) -> str:
        """One line for people: `cold start 6.2 s: activated +0.05 s, ..., first byte +6.2 s`."""
        head = "cold start failed" if self.total_ms is None else f"cold start {_seconds(self.total_ms)}"
        ordered = sorted(self.phases.items(), key=lambda item: item[1])  # stable: PHASES order breaks ties
        steps = ", ".join(f"{PHASE_LABELS.get(p, p)} +{_seconds(ms)}" for p, ms in ordered)
        return f"{head}: {steps}" if steps else f"{head} (no phase seen)"


def _seconds(ms: float) -> str:
    seconds = ms / 1000
    return f"{seconds:.2f} s" if seconds < 1 else f"{seconds:.1f} s"


async def recent_cold_starts(redis: Redis, deployment: str, limit: int = 20) -> list[ColdStart]:
    """The deployment's last `limit` cold starts, newest first."""
    if limit <= 0:
        return []
    raw: Any = await redis.lrange(keys.cold_starts(deployment), 0, limit - 1)
    return [ColdStart.from_json(json.loads(item)) for item in raw]
