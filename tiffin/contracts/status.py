"""Per-deployment status: what `tiffin status` and the admin port's `GET /api/status` report.

State: `warm` (an API server and a runner are ready), `waking` (not warm, and requests wait or run, or more
replicas are wanted than are ready), `idle` (otherwise: at rest, at zero or at min_replicas).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tiffin.contracts import keys
from tiffin.contracts.config import Deployment
from tiffin.contracts.demand import Demand
from tiffin.contracts.load import LoadReport
from tiffin.contracts.queue import now_ms

State = Literal["idle", "waking", "warm"]


@dataclass(frozen=True)
class ComponentStatus:
    """Replica counts of one component: wanted by the scaling writer, and ready (registered, heartbeating)."""

    desired: int | None
    ready: int
    min_replicas: int
    max_replicas: int


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
    last_cold_start_at_ms: int | None
    last_activity_ms: int | None = None
    """Epoch-ms of the last enqueue or finished request (what `idle_s` counts from)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def write_desired(redis: Redis, deployment: str, component: keys.Component, replicas: int) -> None:
    """Record the count the single scaling writer wants (for status; the writer itself acts on it)."""
    await redis.hset(keys.desired(deployment), mapping={component: replicas, "updated_ms": now_ms()})


# KEYS: waking mark, cold-start record. ARGV: request id, duration ms (empty: the start did not finish), now ms.
# Compare-and-delete: a request whose mark expired (or was ended) must not end, or take credit for, a cold
# start that a later request started.
_END_WAKE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], 'duration_ms', ARGV[2], 'at_ms', ARGV[3]) end
return 1
"""


async def end_wake(redis: Redis, deployment: str, request_id: str, duration_ms: float | None = None) -> bool:
    """End the cold start `request_id` started: record its duration if it finished, and let the next one begin.

    Returns False (and changes nothing) when the mark is no longer this request's.
    """
    script = redis.register_script(_END_WAKE)
    duration = "" if duration_ms is None else str(round(duration_ms))
    done: Any = await script(
        keys=[keys.waking(deployment), keys.cold_start(deployment)], args=[request_id, duration, now_ms()]
    )
    return bool(done)


async def read_status(redis: Redis, deployment: Deployment) -> DeploymentStatus:
    """One deployment's status, from Redis alone (any interceptor or CLI can answer it)."""
    return (await read_statuses(redis, [deployment]))[0]


def state_of(api: ComponentStatus, runner: ComponentStatus, busy: bool, woke: bool) -> State:
    """warm: an API server and a runner are ready; waking: not warm, and requests wait or run, a cold start is
    under way, or more replicas are wanted than are ready; idle otherwise."""
    if api.ready > 0 and runner.ready > 0:
        return "warm"
    if busy or woke or any((c.desired or 0) > c.ready for c in (api, runner)):
        return "waking"
    return "idle"


async def read_statuses(redis: Redis, deployments: Sequence[Deployment]) -> list[DeploymentStatus]:
    """Every given deployment's status in two round trips, whatever their number (the dashboard polls this)."""
    now = now_ms()
    async with redis.pipeline(transaction=False) as pipe:
        for dep in deployments:
            name = dep.name
            pipe.xlen(keys.queue(name))
            pipe.xinfo_groups(keys.queue(name))
            pipe.zrangebyscore(keys.runner_load(name), now, "+inf")
            pipe.hgetall(keys.runner_load_values(name))
            pipe.get(keys.activity(name))
            pipe.zcount(keys.replicas(name, "api"), now, "+inf")
            pipe.zcount(keys.replicas(name, "runner"), now, "+inf")
            pipe.hgetall(keys.desired(name))
            pipe.hgetall(keys.cold_start(name))
            pipe.exists(keys.waking(name))
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    per = len(replies) // max(1, len(deployments))
    raw = [replies[i * per : (i + 1) * per] for i in range(len(deployments))]
    queues = [_queue_depth(r[0], r[1]) for r in raw]
    oldest = await _oldest_waiting(redis, [d.name for d in deployments], queues)
    return [
        _status(dep, r, queue, first, now)
        for dep, r, queue, first in zip(deployments, raw, queues, oldest, strict=True)
    ]


def _queue_depth(length: Any, groups: Any) -> tuple[int, int, bytes | None]:
    """(waiting, in flight at proxies, the last id handed to a proxy) from XLEN and XINFO GROUPS."""
    if isinstance(length, ResponseError):
        raise length
    if isinstance(groups, ResponseError) or not isinstance(groups, list):
        return int(length), 0, None  # no stream or no group yet: whatever is queued is waiting
    group = next((g for g in groups if g.get("name") in (keys.GROUP, keys.GROUP.encode())), None)
    if group is None:
        return int(length), 0, None
    in_flight = int(group["pending"])
    return max(0, int(length) - in_flight), in_flight, bytes(group["last-delivered-id"])


async def _oldest_waiting(
    redis: Redis, names: Sequence[str], queues: Sequence[tuple[int, int, bytes | None]]
) -> list[int | None]:
    """Epoch-ms of each queue's oldest waiting entry: the first one after the last id handed to a proxy (acked
    entries are deleted and handed-back ones are appended anew, so every entry up to that id is in flight)."""
    wanted = [i for i, (waiting, _, _) in enumerate(queues) if waiting > 0]
    out: list[int | None] = [None] * len(names)
    if not wanted:
        return out
    async with redis.pipeline(transaction=False) as pipe:
        for i in wanted:
            last = queues[i][2]
            start = "-" if last is None or last == b"0-0" else b"(" + last
            pipe.xrange(keys.queue(names[i]), min=start, max="+", count=1)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    for i, reply in zip(wanted, replies, strict=True):
        if isinstance(reply, list) and reply:
            out[i] = int(bytes(reply[0][0]).split(b"-")[0])
    return out


def _status(
    dep: Deployment, r: list[Any], queue: tuple[int, int, bytes | None], oldest: int | None, now: int
) -> DeploymentStatus:
    for reply in r:
        if isinstance(reply, Exception) and not isinstance(reply, ResponseError):
            raise reply
    live, reports = r[2], r[3]
    runner_load = 0
    for rid in live if isinstance(live, list) else []:
        info = reports.get(rid) if isinstance(reports, dict) else None
        if info is not None:
            runner_load += LoadReport.from_info(json.loads(info)).total
    activity = None if r[4] is None or isinstance(r[4], Exception) else int(r[4])
    waiting, in_flight, _ = queue
    demand = Demand(dep.name, waiting, in_flight, runner_load, activity, now)
    desired_raw: dict[bytes, bytes] = r[7] if isinstance(r[7], dict) else {}
    cold: dict[bytes, bytes] = r[8] if isinstance(r[8], dict) else {}

    def component(name: keys.Component, ready: Any) -> ComponentStatus:
        spec = dep.component(name)
        raw = desired_raw.get(name.encode())
        return ComponentStatus(int(raw) if raw is not None else None, int(ready), spec.min_replicas, spec.max_replicas)

    api, runner = component("api", r[5]), component("runner", r[6])
    idle = demand.idle_s()
    return DeploymentStatus(
        name=dep.name,
        state=state_of(api, runner, demand.busy, bool(r[9])),
        api=api,
        runner=runner,
        queued=waiting,
        in_flight=in_flight,
        runner_load=runner_load,
        oldest_waiting_s=None if oldest is None else max(0.0, (now - oldest) / 1000),
        idle_s=None if idle == float("inf") else round(idle, 1),
        last_cold_start_s=int(cold[b"duration_ms"]) / 1000 if b"duration_ms" in cold else None,
        last_cold_start_at_ms=int(cold[b"at_ms"]) if b"at_ms" in cold else None,
        last_activity_ms=activity,
    )
