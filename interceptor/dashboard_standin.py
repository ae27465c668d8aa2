"""A stand-in for `GET /api/dashboard` and `GET /api/dashboard/{name}`, built from `read_status` alone.

It gives the page (interceptor/page.py) the contract's shapes (the dashboard contract of issue 10) before the
history behind them exists: counts and state are live, every series is empty (null), and the only cold start
known is the last one `read_status` reports, without phases. The full API replaces this module: drop it and
its one `add_routes` line in interceptor/app.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tiffin.contracts import keys
from tiffin.contracts.config import Deployment
from tiffin.contracts.errors import error_body, error_response
from tiffin.contracts.exceptions import NotFound
from tiffin.contracts.queue import now_ms
from tiffin.contracts.registry import Registry
from tiffin.contracts.status import DeploymentStatus, read_status

log = structlog.get_logger("interceptor.dashboard")

WINDOW_S = 3600
SPARK_STEP_S = 60
SERIES_STEP_S = 10
SERIES_NAMES = ("api_ready", "api_desired", "runner_ready", "runner_desired", "requests_per_s", "errors_per_s",
                "queue_wait_p50_s", "queue_wait_p95_s", "upstream_p50_s", "upstream_p95_s")  # fmt: skip
READ_TIMEOUT_S = 5.0


def _times(step_s: int) -> list[int]:
    end = int(time.time()) // step_s * step_s
    return list(range(end - WINDOW_S + step_s, end + step_s, step_s))


def _last_cold_start(status: DeploymentStatus) -> dict[str, Any] | None:
    if status.last_cold_start_s is None or status.last_cold_start_at_ms is None:
        return None
    total_ms = status.last_cold_start_s * 1000
    # read_status records when the start ended; the contract's at_ms is when the waking request arrived.
    arrived_ms = status.last_cold_start_at_ms - round(total_ms)
    return {"request_id": "", "at_ms": arrived_ms, "total_ms": total_ms, "phases": {}, "outcome": "ok"}


def _summary_entry(status: DeploymentStatus) -> dict[str, Any]:
    times = _times(SPARK_STEP_S)
    empty: list[float | None] = [None] * len(times)
    spark = {"step_s": SPARK_STEP_S, "t": times, "requests_per_s": empty, "runner_ready": empty}
    return {**status.to_json(), "last_cold_start": _last_cold_start(status), "spark": spark}


def _settings(dep: Deployment) -> dict[str, Any]:
    def scaled(c: Any) -> dict[str, Any]:
        return {"min_replicas": c.min_replicas, "max_replicas": c.max_replicas, "concurrency": c.concurrency,
                "target": c.scale_target}  # fmt: skip

    return {
        "model": dep.model,
        "served_model_name": dep.model_name,
        "idle_period_s": dep.scaling.idle_period_s,
        "scale_down_window_s": dep.scaling.scale_down_window_s,
        "api": scaled(dep.api),
        "runner": {**scaled(dep.runner), "gpus": dep.runner.gpus, "gpu_type": dep.runner.gpu_type},
        "limits": {"max_queue": dep.limits.max_queue, "wait_timeout_s": dep.limits.wait_timeout_s},
    }


async def _replicas(redis: Redis, dep: Deployment) -> dict[str, list[dict[str, Any]]]:
    now = time.time()
    out: dict[str, list[dict[str, Any]]] = {}
    for component in keys.COMPONENTS:
        ready = await Registry(redis, dep.name, component).ready()
        out[component] = [
            {
                "id": rid,
                "url": info.get("url") or info.get("upstream"),
                "age_s": round(now - float(info["started_at"]), 1) if "started_at" in info else None,
                "in_flight": None,  # per-replica load is the full API's to report
                "concurrency": info.get("concurrency"),
            }
            for rid, info in sorted(ready.items())
        ]
    return out


def _unreachable(exc: BaseException) -> web.Response:
    log.warning("dashboard_redis_unreachable", error=str(exc) or type(exc).__name__)
    body = error_body("redis is unreachable, so deployment status is unknown", "server_error", "redis_unavailable")
    return web.json_response(body, status=503)


def routes(deployments: Callable[[], list[Deployment]], redis: Redis) -> list[web.RouteDef]:
    """The two dashboard routes, reading the deployments `deployments()` names (config order)."""

    async def summary(request: web.Request) -> web.Response:
        deps = deployments()
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                statuses = await asyncio.gather(*(read_status(redis, d) for d in deps))
        except (RedisError, OSError, TimeoutError) as exc:
            return _unreachable(exc)
        totals = {
            "deployments": len(statuses),
            **{state: sum(s.state == state for s in statuses) for state in ("idle", "waking", "warm")},
            "api_ready": sum(s.api.ready for s in statuses),
            "runner_ready": sum(s.runner.ready for s in statuses),
            "gpu_runners_ready": sum(s.runner.ready for s, d in zip(statuses, deps, strict=True) if d.runner.gpus),
            "queued": sum(s.queued for s in statuses),
            "in_flight": sum(s.in_flight for s in statuses),
        }
        return web.json_response({"generated_at_ms": now_ms(), "window_s": WINDOW_S, "totals": totals,
                                  "deployments": [_summary_entry(s) for s in statuses]})  # fmt: skip

    async def detail(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = [d for d in deployments() if d.name == name]
        if not found:
            return error_response(NotFound(f"no deployment named '{name}'", code="deployment_not_found"))
        dep = found[0]
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                status = await read_status(redis, dep)
                replicas = await _replicas(redis, dep)
        except (RedisError, OSError, TimeoutError) as exc:
            return _unreachable(exc)
        last = _last_cold_start(status)
        recent = [last] if last is not None and last["at_ms"] >= now_ms() - WINDOW_S * 1000 else []
        total_s = recent[0]["total_ms"] / 1000 if recent else None
        times = _times(SERIES_STEP_S)
        series: dict[str, Any] = {"step_s": SERIES_STEP_S, "t": times}
        series.update({name: [None] * len(times) for name in SERIES_NAMES})
        return web.json_response({
            "generated_at_ms": now_ms(),
            "deployment": _summary_entry(status),
            "settings": _settings(dep),
            "replicas": replicas,
            "cold_starts": {"count": len(recent), "p50_s": total_s, "p95_s": total_s, "recent": recent},
            "series": series,
        })  # fmt: skip

    return [web.get("/api/dashboard", summary), web.get("/api/dashboard/{name}", detail)]
