"""Cold starts, phase by phase: each component marks the phase it knows, the waking request folds them into a record.

A cold start begins when a request finds its deployment cold and sets the waking mark (`keys.waking`, holding its
request id; see the enqueue script in `tiffin.contracts.queue`). The same script opens the phases hash
(`keys.cold_start_phases`: `rid`, `arrived`). While that mark names that cold start, components mark phases into
the hash, first mark winning, stamped with Redis's clock (one clock for every host):

    activated        the scaler pushed IsActive=true (scaler/service.py)
    replica_started  the scaling writer started the first replica from zero (tiffin/local/autoscaler.py)
    api_ready        the first API server registered (tiffin.contracts.registry)
    engine_ready     the first runner registered: model loaded, warm-up passed (tiffin.contracts.registry)
    dispatched       a proxy took the waking request (the take script in tiffin.contracts.queue)
    first_byte       the waking request's reply began (the interceptor, through `end_wake`)

`end_wake` ends the cold start in one script: it checks the mark is still this request's, builds the record,
pushes it on the bounded list `keys.cold_starts`, and frees the mark for the next cold start. A mark that comes
late (after the end) or for another cold start finds no mark, or another request's, and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tiffin.contracts import keys

log = structlog.get_logger("tiffin.contracts.coldstart")

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
"""Cold starts kept per deployment (the list is trimmed on every push)."""

# A Lua function that the scripts marking a phase share (prepended to them): HSETNX of `phase` -> Redis's time
# (epoch ms) into the phases hash, only while a waking mark exists, names the cold start the hash belongs to, and
# (when `expect` is not '') names the request `expect`. Returns 1 if this call set the phase.
MARK_FUNCTION = """
local function mark_phase(waking_key, phases_key, phase, expect)
  local rid = redis.call('GET', waking_key)
  if not rid or (expect ~= '' and expect ~= rid) then return 0 end
  if redis.call('HGET', phases_key, 'rid') ~= rid then return 0 end
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  return redis.call('HSETNX', phases_key, phase, string.format('%.0f', ms))
end
"""

# KEYS: waking mark, phases hash. ARGV: phase, expected request id ('' for the current cold start, whichever).
_MARK = MARK_FUNCTION + "return mark_phase(KEYS[1], KEYS[2], ARGV[1], ARGV[2])"

# KEYS: waking mark, last cold start (hash), phases hash, records (list).
# ARGV: request id, duration ms ('' when the start did not finish), now ms, records kept, names of marked phases...
# Compare-and-delete: a request whose mark expired (or was ended) must not end, or take credit for, a cold start
# that a later request started. `first_byte` is the caller's duration (the waking request's own measure: arrival
# to its reply's head), so the record's total and the reply's x-tiffin-cold-start-ms header agree exactly.
_END = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
redis.call('DEL', KEYS[1])
local raw = redis.call('HGETALL', KEYS[3])
redis.call('DEL', KEYS[3])
local seen = {}
for i = 1, #raw, 2 do seen[raw[i]] = raw[i + 1] end
local duration = tonumber(ARGV[2])
local arrived
if seen['rid'] == ARGV[1] and seen['arrived'] then
  arrived = tonumber(seen['arrived'])
else
  arrived = tonumber(ARGV[3]) - (duration or 0)
  seen = {}
end
local phases = {}
for i = 5, #ARGV do
  local at = seen[ARGV[i]]
  if at then phases[ARGV[i]] = math.max(0, tonumber(at) - arrived) end
end
local record = {request_id = ARGV[1], at_ms = arrived, phases = phases, outcome = 'failed', total_ms = cjson.null}
if duration then
  phases['first_byte'] = duration
  record.total_ms = duration
  record.outcome = 'ok'
  redis.call('HSET', KEYS[2], 'duration_ms', ARGV[2], 'at_ms', ARGV[3])
end
local encoded = cjson.encode(record)
redis.call('LPUSH', KEYS[4], encoded)
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[4]) - 1)
return encoded
"""


@dataclass(frozen=True)
class ColdStart:
    """One cold start: when its waking request arrived, and each phase seen, in ms since then."""

    request_id: str
    at_ms: int
    """Epoch ms (Redis's clock) the waking request arrived: phase 0."""
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

    def header(self) -> str:
        """The phases as the `x-tiffin-cold-start-phases` header gives them: `activated=40;replica_started=300`."""
        return ";".join(f"{phase}={round(ms)}" for phase, ms in self.phases.items())

    def describe(self) -> str:
        """One line for people: `cold start 6.2 s: activated +0.05 s, ..., first byte +6.2 s`."""
        head = "cold start failed" if self.total_ms is None else f"cold start {_seconds(self.total_ms)}"
        ordered = sorted(self.phases.items(), key=lambda item: item[1])  # stable: PHASES order breaks ties
        steps = ", ".join(f"{PHASE_LABELS.get(p, p)} +{_seconds(ms)}" for p, ms in ordered)
        return f"{head}: {steps}" if steps else f"{head} (no phase seen)"


def _seconds(ms: float) -> str:
    seconds = ms / 1000
    return f"{seconds:.2f} s" if seconds < 1 else f"{seconds:.1f} s"


async def mark(redis: Redis, deployment: str, phase: Phase, request_id: str | None = None) -> bool:
    """Mark `phase` of the deployment's cold start under way (of `request_id`'s only, if given).

    True if this call set it; False when no cold start is under way, it is another request's, or the phase was
    marked already (the first mark wins)."""
    script = redis.register_script(_MARK)
    done: Any = await script(keys=[keys.waking(deployment), keys.cold_start_phases(deployment)],
                             args=[phase, request_id or ""])  # fmt: skip
    return bool(done)


async def note(redis: Redis, deployment: str, phase: Phase, timeout_s: float = 2.0) -> None:
    """`mark`, best effort: a phase lost to a Redis failure must not stop the work it describes."""
    try:
        async with asyncio.timeout(timeout_s):
            await mark(redis, deployment, phase)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("cold_start_phase_not_marked", deployment=deployment, phase=phase, error=repr(exc))


async def end_wake(
    redis: Redis, deployment: str, request_id: str, duration_ms: float | None = None
) -> ColdStart | None:
    """End the cold start `request_id` started, and record it: finished (`duration_ms`, arrival to first byte) or
    failed (None). Returns the record, or None (changing nothing) when the mark is no longer this request's."""
    script = redis.register_script(_END)
    duration = "" if duration_ms is None else str(round(duration_ms))
    script_keys = [keys.waking(deployment), keys.cold_start(deployment), keys.cold_start_phases(deployment),
                   keys.cold_starts(deployment)]  # fmt: skip
    marked = [p for p in PHASES if p != "first_byte"]  # first_byte is the caller's to tell, below
    reply: Any = await script(keys=script_keys, args=[request_id, duration, _now_ms(), MAX_RECORDS, *marked])
    if not reply:
        return None
    return ColdStart.from_json(json.loads(reply))


async def recent_cold_starts(redis: Redis, deployment: str, limit: int = 20) -> list[ColdStart]:
    """The deployment's last `limit` cold starts, newest first."""
    if limit <= 0:
        return []
    raw: Any = await redis.lrange(keys.cold_starts(deployment), 0, limit - 1)
    records: list[ColdStart] = []
    for item in raw:
        try:
            records.append(ColdStart.from_json(json.loads(item)))
        except (ValueError, KeyError, TypeError):
            log.warning("cold_start_record_unreadable", deployment=deployment)
    return records


def _now_ms() -> int:
    return int(time.time() * 1000)
