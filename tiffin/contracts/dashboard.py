"""What the admin API's `/api/dashboard` and `/api/dashboard/{name}` serve, assembled from Redis alone.

The overview costs three pipelined round trips whatever the number of deployments (statuses, the queues'
oldest entries, and the last cold starts with the minute sparklines), so a page can poll it every 2 s with 50
deployments. The detail of one deployment reads its hour of 10 s steps in one more pipeline.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from tiffin.contracts import history, keys
from tiffin.contracts.coldstart import ColdStart, recent_cold_starts
from tiffin.contracts.config import Deployment
from tiffin.contracts.history import SPARK_POINTS, SPARK_STEP_S, STEP_S, WINDOW_S
from tiffin.contracts.load import LoadReport
from tiffin.contracts.queue import now_ms
from tiffin.contracts.runnerpool import read_report, report_json
from tiffin.contracts.status import DeploymentStatus, read_statuses

COLD_STARTS_READ = 100
"""How many of a deployment's last cold starts the detail reads (then keeps those of the last hour)."""
RECENT_SHOWN = 20
"""How many cold starts of the last hour the detail lists one by one."""

# Scripts, not pipelines, and JSON replies: one command and one string per deployment cost far less to send and
# parse (redis-py's parser is pure Python here) than thousands of small replies. The scripts make the step and
# minute hash names from their prefixes (`keys.history_steps`, `keys.history_minutes`) rather than receive them
# all: a single Redis, not a cluster, holds tiffin's state.
# ARGV: first minute, minute length, minutes, then each deployment's minute prefix. Per deployment: JSON
# [[requests, runner_ready], ...], false where nothing was recorded.
_READ_SPARKS = """
local first, step, count = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for d = 4, #ARGV do
  local minutes = {}
  for m = 1, count do
    minutes[m] = redis.call('HMGET', ARGV[d] .. (first + (m - 1) * step), 'requests', 'runner_ready')
  end
  out[d - 3] = cjson.encode(minutes)
end
return out
"""

# ARGV: a step prefix, first step, step length, steps. JSON: each step hash's fields as an object.
_READ_STEPS = """
local prefix, first, step, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for i = 1, count do
  local flat, fields = redis.call('HGETALL', prefix .. (first + (i - 1) * step)), {}
  for j = 1, #flat, 2 do fields[flat[j]] = flat[j + 1] end
  out[i] = fields
end
return cjson.encode(out)
"""

# /api/status's fields that the dashboard leaves out (it has `last_cold_start` and `idle_s` instead).
_STATUS_ONLY = ("last_cold_start_s", "last_cold_start_at_ms", "last_activity_ms")


def _steps(now_s: float, step_s: int, points: int) -> list[int]:
    """The starts of the last `points` steps, oldest first, ending with the one under way."""
    last = history.step_of(now_s, step_s)
    return [last - step_s * (points - 1 - i) for i in range(points)]


def _rate(count: bytes | str | None, start: int, step_s: int, now_s: float) -> float | None:
    """Per second over the step; the step under way is divided by the time it has lasted so far."""
    if count is None:
        return None
    lasted = min(float(step_s), max(1.0, now_s - start))
    return round(int(count) / lasted, 3)


def _int(raw: bytes | str | None) -> int | None:
    return None if raw is None else int(raw)


async def summary(redis: Redis, deployments: Sequence[Deployment]) -> dict[str, Any]:
    """`GET /api/dashboard`: totals and one entry per deployment (its status, last cold start and sparklines)."""
    now_s = time.time()
    statuses, sparks, pool = await asyncio.gather(
        read_statuses(redis, deployments), _sparks(redis, deployments, now_s), read_report(redis)
    )
    entries = [_entry(s, spark) for s, spark in zip(statuses, sparks, strict=True)]
    return {
        "generated_at_ms": now_ms(),
        "window_s": WINDOW_S,
        "totals": totals(statuses, deployments),
        "deployments": entries,
        "runner_pool": report_json(pool),  # the single-machine runner pool's memory; null elsewhere
    }


def totals(statuses: Sequence[DeploymentStatus], deployments: Sequence[Deployment]) -> dict[str, int]:
    """Counts across deployments: by state, replicas ready, GPU runners ready (runner.gpus > 0), requests."""
    gpus = {d.name: d.runner.gpus > 0 for d in deployments}
    return {
        "deployments": len(statuses),
        "idle": sum(s.state == "idle" for s in statuses),
        "sleeping": sum(s.state == "sleeping" for s in statuses),
        "waking": sum(s.state == "waking" for s in statuses),
        "warm": sum(s.state == "warm" for s in statuses),
        "api_ready": sum(s.api.ready for s in statuses),
        "runner_ready": sum(s.runner.ready for s in statuses),
        "gpu_runners_ready": sum(s.runner.ready for s in statuses if gpus.get(s.name)),
        "queued": sum(s.queued for s in statuses),
        "in_flight": sum(s.in_flight for s in statuses),
    }


async def _sparks(redis: Redis, deployments: Sequence[Deployment], now_s: float) -> list[dict[str, Any]]:
    """Each deployment's minute sparklines (requests per second, runners ready), in one round trip."""
    if not deployments:
        return []
    minutes = _steps(now_s, SPARK_STEP_S, SPARK_POINTS)
    prefixes = [keys.history_minutes(d.name) for d in deployments]
    args: list[str | int] = [minutes[0], SPARK_STEP_S, len(minutes), *prefixes]
    replies: Any = await redis.register_script(_READ_SPARKS)(args=args)
    out = []
    for encoded in replies:
        points = [[v or None for v in point] for point in json.loads(encoded)]
        out.append({
            "step_s": SPARK_STEP_S,
            "t": minutes,
            "requests_per_s": [_rate(p[0], m, SPARK_STEP_S, now_s) for p, m in zip(points, minutes, strict=True)],
            "runner_ready": [_int(p[1]) for p in points],
        })  # fmt: skip
    return out


def _entry(status: DeploymentStatus, spark: dict[str, Any]) -> dict[str, Any]:
    """The overview's object for one deployment: its status as /api/status gives it, less what the dashboard
    shows otherwise, and its sparklines."""
    entry = {k: v for k, v in status.to_json().items() if k not in _STATUS_ONLY}
    entry["last_cold_start"] = None if status.last_cold_start is None else status.last_cold_start.to_json()
    entry["spark"] = spark
    return entry


async def detail(redis: Redis, deployment: Deployment) -> dict[str, Any]:
    """`GET /api/dashboard/{name}`: the overview's entry, settings, replicas, cold starts and the hour's series."""
    now_s = time.time()
    (status,), (spark,), replicas, colds, series = await asyncio.gather(
        read_statuses(redis, [deployment]),
        _sparks(redis, [deployment], now_s),
        read_replicas(redis, deployment.name, now_s),
        recent_cold_starts(redis, deployment.name, COLD_STARTS_READ),
        read_series(redis, deployment.name, now_s),
    )
    return {
        "generated_at_ms": now_ms(),
        "deployment": _entry(status, spark),
        "settings": settings(deployment),
        "replicas": replicas,
        "cold_starts": cold_start_summary(colds, now_s),
        "series": series,
    }


def settings(dep: Deployment) -> dict[str, Any]:
    """The deployment's scaling bounds, targets, idle period and limits, as configured."""

    def scaled(component: keys.Component) -> dict[str, Any]:
        spec = dep.component(component)
        return {
            "min_replicas": spec.min_replicas,
            "max_replicas": spec.max_replicas,
            "concurrency": spec.concurrency,
            "target": spec.scale_target,
        }

    return {
        "model": dep.model,
        "served_model_name": dep.model_name,
        "idle_period_s": dep.scaling.idle_period_s,
        "scale_down_window_s": dep.scaling.scale_down_window_s,
        "api": scaled("api"),
        "runner": {**scaled("runner"), "gpus": dep.runner.gpus, "gpu_type": dep.runner.gpu_type},
        "limits": {"max_queue": dep.limits.max_queue, "wait_timeout_s": dep.limits.wait_timeout_s},
    }


async def read_replicas(redis: Redis, name: str, now_s: float) -> dict[str, list[dict[str, Any]]]:
    """Each ready replica with its age and requests in flight: an API server's are its proxy's pending queue
    entries; a runner's are what the API servers' live load reports say they have at it."""
    now = int(now_s * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for component in keys.COMPONENTS:
            pipe.zrangebyscore(keys.replicas(name, component), now, "+inf")
            pipe.hgetall(keys.replica_info(name, component))
        pipe.xpending(keys.queue(name), keys.GROUP)
        pipe.zrangebyscore(keys.runner_load(name), now, "+inf")
        pipe.hgetall(keys.runner_load_values(name))
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    pending = replies[4]
    at_api: dict[str, int] = {}
    if not isinstance(pending, Exception):  # no group yet: nothing is in flight
        at_api = {_text(c["name"]): int(c["pending"]) for c in pending["consumers"]}
    at_runner: dict[str, int] = {}
    for rid in replies[5]:
        raw = replies[6].get(rid)
        if raw is not None:
            for runner, count in LoadReport.from_info(json.loads(raw)).runners.items():
                at_runner[runner] = at_runner.get(runner, 0) + count
    out: dict[str, list[dict[str, Any]]] = {}
    for index, component in enumerate(keys.COMPONENTS):
        ids, infos = replies[2 * index], replies[2 * index + 1]
        listed = []
        in_flight = at_api if component == "api" else at_runner
        for rid in ids:
            raw = infos.get(rid)
            if raw is None:
                continue
            info = json.loads(raw)
            started = info.get("started_at")
            rid_s = rid.decode()
            listed.append({
                "id": rid_s,
                "url": info.get("url") or info.get("upstream"),
                "age_s": None if started is None else round(max(0.0, now_s - float(started)), 1),
                "in_flight": in_flight.get(rid_s, 0),
                "concurrency": info.get("concurrency"),
            })  # fmt: skip
        out[component] = listed
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) of exact values, interpolated between the two nearest ranks; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def cold_start_summary(records: Sequence[ColdStart], now_s: float) -> dict[str, Any]:
    """The last hour's cold starts: how many, p50/p95 of those that finished (seconds), the latest ones."""
    since = int((now_s - WINDOW_S) * 1000)
    hour = [r for r in records if r.at_ms >= since]
    finished = [r.total_ms / 1000 for r in hour if r.total_ms is not None and r.outcome == "ok"]

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "count": len(hour),
        "p50_s": rounded(percentile(finished, 0.5)),
        "p95_s": rounded(percentile(finished, 0.95)),
        "recent": [r.to_json() for r in hour[:RECENT_SHOWN]],
    }


async def read_series(redis: Redis, name: str, now_s: float) -> dict[str, Any]:
    """The last hour in 10 s steps, oldest first: replicas, request and error rates, queue wait and upstream
    p50/p95 (from the step's merged histogram buckets); null where nothing was recorded."""
    steps = _steps(now_s, STEP_S, history.POINTS)
    args: list[str | int] = [keys.history_steps(name), steps[0], STEP_S, len(steps)]
    encoded: Any = await redis.register_script(_READ_STEPS)(args=args)
    hashes: list[dict[str, str]] = json.loads(encoded)
    out: dict[str, Any] = {"step_s": STEP_S, "t": steps}
    for component in keys.COMPONENTS:
        for field in (history.ready_field(component), history.desired_field(component)):
            out[field] = [_int(h.get(field)) for h in hashes]
    out["requests_per_s"] = [
        _rate(h.get(history.REQUESTS), s, STEP_S, now_s) for h, s in zip(hashes, steps, strict=True)
    ]
    out["errors_per_s"] = [_rate(h.get(history.ERRORS), s, STEP_S, now_s) for h, s in zip(hashes, steps, strict=True)]
    for series, label in ((history.QUEUE_WAIT, "queue_wait"), (history.UPSTREAM, "upstream")):
        buckets = [[int(h.get(history.bucket_field(series, i), 0)) for i in range(len(history.BUCKETS) + 1)]
                   for h in hashes]  # fmt: skip
        for q, suffix in ((0.5, "p50_s"), (0.95, "p95_s")):
            out[f"{label}_{suffix}"] = [_round(history.quantile(b, q)) for b in buckets]
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
