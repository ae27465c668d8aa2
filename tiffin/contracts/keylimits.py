"""Per-key limits on a deployment, shared by every interceptor: one atomic script per request, one to release.

Rate: GCRA (a token bucket kept as one number, the theoretical arrival time), on Redis's own clock so every
interceptor counts alike. Concurrency: a sorted set of the key's requests in progress, each scored by the
end of its lease. The interceptor holding a slot renews the lease while the request lives and removes it when
the request ends, however it ends; if the interceptor dies, its slots lapse within a lease instead of leaking.
The same script records the key's last use, so `tiffin keys list` shows it at no extra round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tiffin.contracts import keys
from tiffin.contracts.config import KeyLimits
from tiffin.contracts.exceptions import KeyConcurrencyLimited, KeyRateLimited

log = structlog.get_logger("tiffin.contracts.keylimits")

# KEYS: rate state, slots, last-used hash.
# ARGV: emission interval ms (0: no rate limit), burst, concurrency (0: no limit), slot id, lease ms, key id.
# Returns {0, 0} admitted, {1, ms} over the concurrency limit, {2, ms} over the rate (ms: when to retry).
# Nothing is written unless the request is admitted, so a refused request costs the key nothing.
# Numbers are written with string.format: Lua's tostring would turn epoch-ms into 1.7e+12.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local concurrency = tonumber(ARGV[3])
local lease = tonumber(ARGV[5])
if concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= concurrency then return {1, 1000} end
end
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  local allow_at = tat + interval - burst * interval
  if allow_at > now then return {2, math.ceil(allow_at - now)} end
  local new_tat = tat + interval
  redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
end
if concurrency > 0 then
  redis.call('ZADD', KEYS[2], string.format('%.0f', now + lease), ARGV[4])
  redis.call('PEXPIRE', KEYS[2], 2 * lease)
end
redis.call('HSET', KEYS[3], ARGV[6], string.format('%.0f', now))
return {0, 0}
"""

# KEYS: slots... ARGV: lease ms, then one slot id per key. Extends leases still held (XX: never revives one).
_RENEW = """
local t = redis.call('TIME')
local until_ms = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1]))
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', until_ms, ARGV[i + 1])
  redis.call('PEXPIRE', key, 2 * tonumber(ARGV[1]))
end
return #KEYS
"""

# KEYS: slots, a key the caller is done with. ARGV: slot id. A slot freed and the request's state deleted in one
# command (a client that batches the commands of a loop turn sends many requests' releases together).
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('DEL', KEYS[2])
"""


@dataclass(frozen=True)
class Slot:
    """A request's place among its key's requests in progress on one deployment."""

    key: str
    request_id: str


class KeyLimiter:
    """Admits requests within their key's limits and holds their concurrency slots until they end."""

    def __init__(self, redis: Redis, lease_s: float = 30.0) -> None:
        self.redis = redis
        self.lease_ms = max(1000, int(lease_s * 1000))
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self.held: dict[str, Slot] = {}

    async def acquire(self, key_id: str, deployment: str, limits: KeyLimits, request_id: str) -> Slot | None:
        """Admit one request or raise `KeyRateLimited` / `KeyConcurrencyLimited` (with Retry-After).

        Returns the concurrency slot to `release` when the request ends (None when concurrency is unlimited).
        """
        interval = 1000.0 / limits.requests_per_second if limits.requests_per_second else 0.0
        concurrency = limits.concurrency or 0
        slots = keys.key_slots(key_id, deployment)
        reply: Any = await self._acquire(
            keys=[keys.key_rate(key_id, deployment), slots, keys.API_KEYS_LAST_USED],
            args=[repr(interval), limits.burst, concurrency, request_id, self.lease_ms, key_id],
        )
        verdict, wait_ms = int(reply[0]), int(reply[1])
        retry_after = max(1, math.ceil(wait_ms / 1000))
        if verdict == 1:
            raise KeyConcurrencyLimited(
                f"This API key already has {concurrency} requests in progress on '{deployment}', its limit; "
                "retry when one finishes.",
                retry_after=retry_after,
            )
        if verdict == 2:
            raise KeyRateLimited(
                f"Rate limit reached for this API key on '{deployment}': {limits.requests_per_second:g} requests "
                f"per second (bursts of {limits.burst}); retry in {retry_after}s.",
                retry_after=retry_after,
            )
        if not concurrency:
            return None
        slot = Slot(slots, request_id)
        self.held[request_id] = slot
        return slot

    async def release(self, slot: Slot | None, *, also_delete: str | None = None) -> None:
        """Free a slot; if Redis cannot be reached the lease runs out instead (nothing leaks for long).

        `also_delete`: a key the caller is done with, deleted in the same round trip (best effort alike)."""
        if slot is None and also_delete is None:
            return
        if slot is not None:
            self.held.pop(slot.request_id, None)
        try:
            if slot is None:
                await self.redis.delete(also_delete)  # type: ignore[arg-type]  # not None: checked above
            elif also_delete is None:
                await self.redis.zrem(slot.key, slot.request_id)
            else:
                await self._release(keys=[slot.key, also_delete], args=[slot.request_id])
        except (RedisError, OSError) as exc:
            log.warning("key_slot_release_failed", error=str(exc))

    async def renew_forever(self, stop: asyncio.Event) -> None:
        """Extend the leases of the slots held here, every third of a lease, until `stop`."""
        period = self.lease_ms / 3000
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period)
            if stop.is_set():
                return
            held = list(self.held.values())
            if not held:
                continue
            try:
                await self._renew(keys=[s.key for s in held], args=[self.lease_ms, *(s.request_id for s in held)])
            except (RedisError, OSError) as exc:  # the next pass retries before the lease runs out
                log.warning("key_slot_renew_failed", slots=len(held), error=str(exc))
