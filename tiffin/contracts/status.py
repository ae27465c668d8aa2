"""Per-deployment status: what `tiffin status` and the admin port's `GET /api/status` report.

State: `warm` (an API server and a runner are ready), `sleeping` (GPU runners asleep in the sleeping tier, nothing
waiting), `waking` (not warm, and requests wait or run, or more replicas are wanted than are ready), `idle`
(otherwise: at rest, at zero or at min_replicas).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from redis.asyncio import Redis

from tiffin.contracts import keys
from tiffin.contracts.coldstart import ColdStart
from tiffin.contracts.config import Deployment
from tiffin.contracts.demand import Demand
from tiffin.contracts.load import LoadReport
from tiffin.contracts.queue import now_ms

State = Literal["idle", "sleeping", "waking", "warm"]


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
    last_activity_ms: int | None = None
    """Epoch-ms of the last enqueue or finished request (what `idle_s` counts from)."""

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
    return (await read_statuses(redis, [deployment]))[0]


def state_of(api: ComponentStatus, runner: ComponentStatus, busy: bool, woke: bool, asleep: bool = False) -> State:
    """warm: an API server and a runner are ready; sleeping: the runners sleep (`asleep`: the sleeping tier's mark)
    and no request waits; waking: not warm, and requests wait or run, a cold start is under way, or more replicas
    are wanted than are ready; idle otherwise."""
    if api.ready > 0 and runner.ready > 0:
        return "warm"
    if asleep and not (busy or woke):
        return "sleeping"  # asleep runners are deregistered but still wanted: not a start under way
    if busy or woke or any((c.desired or 0) > c.ready for c in (api, runner)):
        return "waking"
    return "idle"


# KEYS, twelve per deployment: queue, runner-load, runner-load-values, activity, api replicas, runner replicas,
# desired, cold-start, waking, cold-starts, cluster-ready, sleep. ARGV: now ms, the proxies' consumer group. One reply
# per deployment: {queue length, in flight, id of the oldest waiting entry or nil, live runner load reports, activity,
# api ready, runner ready, desired (flat), cold start (flat), waking, the newest cold-start record or nil, cluster
# ready (flat), sleep}. A script, not a pipeline: one command for 50 deployments costs far less to send and parse
# than 600, and the oldest waiting entry needs the group's last-delivered id first.
_READ_STATUSES = """
local out = {}
for d = 0, #KEYS / 12 - 1 do
  local k = d * 12
  local q = KEYS[k + 1]
  local length = redis.call('XLEN', q)
  local pending, last = 0, nil
  local groups = redis.pcall('XINFO', 'GROUPS', q)
  if type(groups) == 'table' and not groups.err then
    for _, g in ipairs(groups) do
      local f = {}
      for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
      if f['name'] == ARGV[2] then pending, last = f['pending'], f['last-delivered-id'] end
    end
  end
  local oldest = false
  if length > pending then
    -- Acked entries are deleted and handed-back ones appended anew: everything up to the group's last-delivered
    -- id is in flight, so the first entry after it is the oldest waiting one.
    local from = '-'
    if last and last ~= '0-0' then from = '(' .. last end
    local first = redis.call('XRANGE', q, from, '+', 'COUNT', 1)
    if #first > 0 then oldest = first[1][1] end
  end
  local live = redis.call('ZRANGEBYSCORE', KEYS[k + 2], ARGV[1], '+inf')
  local reports = {}
  if #live > 0 then reports = redis.call('HMGET', KEYS[k + 3], unpack(live)) end
  out[d + 1] = {length, pending, oldest, reports, redis.call('GET', KEYS[k + 4]),
    redis.call('ZCOUNT', KEYS[k + 5], ARGV[1], '+inf'), redis.call('ZCOUNT', KEYS[k + 6], ARGV[1], '+inf'),
    redis.call('HGETALL', KEYS[k + 7]), redis.call('HGETALL', KEYS[k + 8]), redis.call('EXISTS', KEYS[k + 9]),
    redis.call('LINDEX', KEYS[k + 10], 0), redis.call('HGETALL', KEYS[k + 11]), redis.call('EXISTS', KEYS[k + 12])}
end
return out
"""


async def read_statuses(redis: Redis, deployments: Sequence[Deployment]) -> list[DeploymentStatus]:
    """Every given deployment's status in one round trip, whatever their number (the dashboard polls this)."""
    if not deployments:
        return []
    now = now_ms()
    names = [d.name for d in deployments]
    script_keys = [
        key
        for n in names
        for key in (keys.queue(n), keys.runner_load(n), keys.runner_load_values(n), keys.activity(n),
                    keys.replicas(n, "api"), keys.replicas(n, "runner"), keys.desired(n), keys.cold_start(n),
                    keys.waking(n), keys.cold_starts(n), keys.cluster_ready(n), keys.sleep(n))
    ]  # fmt: skip
    replies: Any = await redis.register_script(_READ_STATUSES)(keys=script_keys, args=[now, keys.GROUP])
    return [_status(dep, reply, now) for dep, reply in zip(deployments, replies, strict=True)]


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _status(dep: Deployment, r: list[Any], now: int) -> DeploymentStatus:
    length, in_flight, oldest_id = int(r[0]), int(r[1]), r[2]
    waiting = max(0, length - in_flight)
    runner_load = sum(LoadReport.from_info(json.loads(info)).total for info in r[3] if info is not None)
    activity = None if r[4] is None else int(r[4])
    demand = Demand(dep.name, waiting, in_flight, runner_load, activity, now)
    desired_raw, cold, cluster_raw = _pairs(r[7]), _pairs(r[8]), _pairs(r[11])
    oldest = None if oldest_id is None else int(bytes(oldest_id).split(b"-")[0])

    def component(name: keys.Component, ready: Any) -> ComponentStatus:
        spec = dep.component(name)
        raw, cluster = desired_raw.get(name.encode()), cluster_raw.get(name.encode())
        return ComponentStatus(int(raw) if raw is not None else None, int(ready), spec.min_replicas, spec.max_replicas,
                               int(cluster) if cluster is not None else None)  # fmt: skip

    api, runner = component("api", r[5]), component("runner", r[6])
    idle = demand.idle_s()
    return DeploymentStatus(
        name=dep.name,
        state=state_of(api, runner, demand.busy, bool(r[9]), asleep=bool(r[12])),
        api=api,
        runner=runner,
        queued=waiting,
        in_flight=in_flight,
        runner_load=runner_load,
        oldest_waiting_s=None if oldest is None else max(0.0, (now - oldest) / 1000),
        idle_s=None if idle == float("inf") else round(idle, 1),
        last_cold_start_s=int(cold[b"duration_ms"]) / 1000 if b"duration_ms" in cold else None,
        last_cold_start_at_ms=int(cold[b"at_ms"]) if b"at_ms" in cold else None,
        last_cold_start=None if r[10] is None else ColdStart.from_json(json.loads(r[10])),
        last_activity_ms=activity,
    )
