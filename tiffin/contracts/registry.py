"""Registry of ready replicas per deployment and component, kept alive by heartbeats.

A replica is listed only while it heartbeats: an entry is a sorted-set member scored by the epoch-ms at
which it lapses, so a replica that dies (even by SIGKILL) drops out after its TTL with nothing to clean up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import structlog
from redis.asyncio import Redis

from tiffin.contracts import keys
from tiffin.contracts.coldstart import MARK_FUNCTION
from tiffin.contracts.queue import now_ms

log = structlog.get_logger("tiffin.contracts.registry")

_SWEEP = """
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, id in ipairs(lapsed) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
return #lapsed
"""


class ExpiringMap:
    """Members with JSON info that stay listed only while refreshed: a sorted set of expiries beside a hash."""

    def __init__(self, redis: Redis, set_key: str, info_key: str, ttl_s: float = 10.0) -> None:
        self.redis = redis
        self.ttl_ms = int(ttl_s * 1000)
        self._set = set_key
        self._info = info_key
        self._sweep = redis.register_script(_SWEEP)

    async def register(self, replica_id: str, info: dict[str, Any]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._info, replica_id, json.dumps(info))
            pipe.zadd(self._set, {replica_id: now_ms() + self.ttl_ms})
            await pipe.execute()

    async def heartbeat(self, replica_id: str) -> None:
        # xx: a replica deregistered (or expired and swept) must register again, not come back silently.
        await self.redis.zadd(self._set, {replica_id: now_ms() + self.ttl_ms}, xx=True)

    async def deregister(self, replica_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._set, replica_id)
            pipe.hdel(self._info, replica_id)
            await pipe.execute()

    async def is_alive(self, replica_id: str) -> bool:
        score = await self.redis.zscore(self._set, replica_id)
        return score is not None and score > now_ms()

    async def ready(self) -> dict[str, dict[str, Any]]:
        """Live replicas with their info; sweeps lapsed ones."""
        now = now_ms()
        # One script: a replica re-registering between listing and deleting must not lose its info.
        await self._sweep(keys=[self._set, self._info], args=[now])
        ids: list[bytes] = await self.redis.zrangebyscore(self._set, now, "+inf")  # type: ignore[assignment]
        if not ids:
            return {}
        infos = await self.redis.hmget(self._info, ids)
        return {rid.decode(): json.loads(info) for rid, info in zip(ids, infos, strict=True) if info is not None}

    async def count(self) -> int:
        """How many are live, in one command (read-only: lapsed members are left for `ready` to sweep)."""
        return int(await self.redis.zcount(self._set, now_ms(), "+inf"))

    @contextlib.asynccontextmanager
    async def keep(self, replica_id: str, info: dict[str, Any]) -> AsyncIterator[None]:
        """Register now, heartbeat in the background, deregister on exit."""
        await self.register(replica_id, info)
        stop = asyncio.Event()
        task = asyncio.create_task(self._beat(replica_id, info, stop), name=f"heartbeat-{replica_id}")
        try:
            yield
        finally:
            # The event as well as cancel(): on Python 3.11 asyncio.wait_for (which redis-py uses to send every
            # command) can swallow a cancellation that lands as the send completes, and the loop would run on.
            stop.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(Exception):
                await self.deregister(replica_id)

    async def _beat(self, replica_id: str, info: dict[str, Any], stop: asyncio.Event) -> None:
        interval = self.ttl_ms / 3000
        while not stop.is_set():
            await asyncio.sleep(interval)
            if stop.is_set():
                return
            try:
                if not await self.is_alive(replica_id):
                    await self.register(replica_id, info)  # lapsed during a stall: come back explicitly
                else:
                    await self.heartbeat(replica_id)
            except Exception as exc:  # Redis blips must not kill the replica; the TTL covers real outages
                log.warning("heartbeat_failed", replica=replica_id, error=str(exc))


# KEYS: info hash, expiry set, waking mark, cold-start phases. ARGV: replica id, info JSON, lapse ms, phase, now ms.
# A registration is when a replica became ready: one that takes its component from none ready to one, during a
# cold start, marks that phase in the same step, so nothing in runtime/ needs to know about cold starts (and a
# second runner joining one that was warm all along is not the engine becoming ready).
_REGISTER = (
    MARK_FUNCTION
    + """
local first = redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[5], '+inf') == 0
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if first then mark_phase(KEYS[3], KEYS[4], ARGV[4], '') end
return 1
"""
)


class Registry(ExpiringMap):
    """Ready replicas of one component of one deployment."""

    def __init__(self, redis: Redis, deployment: str, component: keys.Component, ttl_s: float = 10.0) -> None:
        super().__init__(redis, keys.replicas(deployment, component), keys.replica_info(deployment, component), ttl_s)
        self.deployment = deployment
        self.component = component
        self._register = redis.register_script(_REGISTER)

    async def register(self, replica_id: str, info: dict[str, Any]) -> None:
        """List the replica as ready; the first of its component ready during a cold start marks `api_ready` (an
        API server's proxy registers once its API server answers) or `engine_ready` (a runner, once warmed up)."""
        phase = "api_ready" if self.component == "api" else "engine_ready"
        script_keys = [self._info, self._set, keys.waking(self.deployment), keys.cold_start_phases(self.deployment)]
        now = now_ms()
        await self._register(keys=script_keys, args=[replica_id, json.dumps(info), now + self.ttl_ms, phase, now])
