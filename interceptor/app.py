"""The interceptor's two aiohttp applications: the public edge and the admin listener."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from interceptor import metrics
from interceptor.admin_auth import require_token
from interceptor.middleware import EDGE, edge_middleware, on_prepare, request_id
from interceptor.relay import Relay
from tiffin.contracts.config import Deployment
from tiffin.contracts.errors import error_body, error_response
from tiffin.contracts.exceptions import MethodNotAllowed, NotFound, RequestError
from tiffin.contracts.frames import COMPLETION_PATHS
from tiffin.contracts.queue import now_ms
from tiffin.contracts.runnerpool import read_report, report_json
from tiffin.contracts.status import read_status

log = structlog.get_logger("interceptor")

RELAY = web.AppKey("relay", Relay)
REDIS = web.AppKey("redis", Redis)

# A status read is a handful of round trips; past this, Redis is as good as unreachable for the caller.
STATUS_TIMEOUT_S = 5.0


def public_app(relay: Relay) -> web.Application:
    """Every path is routed by host and prefix, so one catch-all handler dispatches by suffix."""
    app = web.Application(middlewares=[edge_middleware])
    app[RELAY] = relay
    app[EDGE] = relay.edge
    app.on_response_prepare.append(on_prepare)
    app.router.add_route("*", "/{tail:.*}", _dispatch)
    return app


async def _dispatch(request: web.Request) -> web.StreamResponse:
    relay = request.app[RELAY]
    path = request.path
    rid = request_id(request)
    if path.endswith(COMPLETION_PATHS):
        if request.method != "POST":
            return error_response(MethodNotAllowed(f"{request.method} is not allowed on {path}; use POST"), rid)
        return await relay.completion(request)
    if path.endswith("/v1/models"):
        try:
            if request.method != "GET":
                raise MethodNotAllowed(f"{request.method} is not allowed on {path}; use GET")
            route = relay.router.match(request.host, path)
            models = relay.gate.models(route, relay.gate.identify(request.headers.get("Authorization")), path)
        except RequestError as exc:
            return error_response(exc, rid)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "tiffin"} for m in models]
        return web.json_response({"object": "list", "data": data})
    return error_response(NotFound("no endpoint at this path", code="route_not_found"), rid)


def admin_app(relay: Relay, redis: Redis, token: str | None = None) -> web.Application:
    """Health, readiness, metrics and deployment status, on a port that is not exposed publicly.

    With `token`, everything but the health probes requires it (`Authorization: Bearer TOKEN`)."""
    app = web.Application(middlewares=[require_token(token)] if token else [])
    app[RELAY] = relay
    app[REDIS] = redis
    app.on_response_prepare.append(on_prepare)  # Server: tiffin here too (no version for a scanner)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/api/status", _status_all)
    app.router.add_get("/api/status/{name}", _status_one)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    if request.app[RELAY].draining:
        return web.json_response({"status": "draining"}, status=503)
    try:
        await request.app[REDIS].ping()
    except (RedisError, OSError) as exc:
        # The detail goes to the log, not to whoever asks.
        log.warning("readiness_redis_unreachable", error=str(exc) or type(exc).__name__)
        return web.json_response({"status": "redis unreachable"}, status=503)
    return web.json_response({"status": "ready"})


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _status_all(request: web.Request) -> web.Response:
    """Every deployment of this interceptor's config, in config order."""
    return await _status(request, request.app[RELAY].router.deployments)


async def _status_one(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    found = [d for d in request.app[RELAY].router.deployments if d.name == name]
    if not found:
        return error_response(NotFound(f"no deployment named '{name}'", code="deployment_not_found"))
    return await _status(request, found, single=True)


async def _status(request: web.Request, deployments: list[Deployment], single: bool = False) -> web.Response:
    redis = request.app[REDIS]
    try:
        async with asyncio.timeout(STATUS_TIMEOUT_S):
            statuses = await asyncio.gather(*(read_status(redis, d) for d in deployments))
            pool = None if single else await read_report(redis)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("status_redis_unreachable", error=str(exc) or type(exc).__name__)
        message = "redis is unreachable, so deployment status is unknown"
        return web.json_response(error_body(message, "server_error", "redis_unavailable"), status=503)
    if single:
        return web.json_response(statuses[0].to_json())
    body = {"deployments": [s.to_json() for s in statuses], "runner_pool": report_json(pool), "at_ms": now_ms()}
    return web.json_response(body)
