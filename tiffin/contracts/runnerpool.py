"""The runner pool's report in Redis (keys.RUNNER_POOL): written by `tiffin up`, read for `/api/status`.

Both sides live here so they cannot drift. The report expires: no running pool, no report (status shows null).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from redis.asyncio import Redis

from tiffin.contracts import keys

PoolState = Literal["starting", "ready", "down"]
REPORT_TTL_S = 15.0


@dataclass(frozen=True)
class PoolReport:
    """What the pool costs and does: its memory (the cost of starting runners by fork) and its counts."""

    state: PoolState
    rss_bytes: int
    """Resident memory of the pool process (torch and vLLM imported, no model)."""
    pss_bytes: int
    """Its proportional share: pages its forked runners still share with it count once between them."""
    pid: int
    runners_started: int
    plain_fallbacks: int
    """Runners started plainly because the pool was not ready or gone."""
    restarts: int
    updated_ms: int


async def write_report(redis: Redis, report: PoolReport) -> None:
    """Store the report, expiring after REPORT_TTL_S unless written again."""
    fields = {k: str(v) for k, v in asdict(report).items()}
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.RUNNER_POOL, mapping=fields)  # type: ignore[arg-type]
        pipe.pexpire(keys.RUNNER_POOL, int(REPORT_TTL_S * 1000))
        await pipe.execute()


async def read_report(redis: Redis) -> PoolReport | None:
    """The last report, or None when no pool reports (off, or not on this platform)."""
    raw = await redis.hgetall(keys.RUNNER_POOL)
    if not raw:
        return None
    fields = {_text(k): _text(v) for k, v in raw.items()}
    counts = ("rss_bytes", "pss_bytes", "pid", "runners_started", "plain_fallbacks", "restarts", "updated_ms")
    try:
        state: PoolState = "down"
        if fields["state"] in ("starting", "ready"):
            state = "ready" if fields["state"] == "ready" else "starting"
        return PoolReport(state, *(int(fields[k]) for k in counts))
    except (KeyError, ValueError):
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def report_json(report: PoolReport | None) -> dict[str, object] | None:
    """The report as `/api/status` shows it (under `runner_pool`)."""
    return None if report is None else asdict(report)
