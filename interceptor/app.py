"""The interceptor's two aiohttp applications: the public edge and the admin listener."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from interceptor import gauges, metrics
from interceptor.admin_auth import require_token
from interceptor.appdocs import is_endpoint_path, serve_app_docs
from interceptor.middleware import EDGE, edge_middleware, on_prepare, request_id
from interceptor.page import add_page_routes
from interceptor.relay import Relay
from tiffin.contracts.apps import APPS_PATH
from tiffin.contracts.config import Deployment
from tiffin.contracts.dashboard import detail, summary
from tiffin.contracts.errors import error_body, error_response
from tiffin.contracts.exceptions import MethodNotAllowed, NotFound, RequestError
from tiffin.contracts.frames import COMPLETION_PATHS
from tiffin.contracts.queue import now_ms
from tiffin.contracts.runnerpool import read_report, report_json
from tiffin.contracts.status import read_statuses

log = structlog.get_logger("interceptor")

RELAY = web.AppKey("relay", Relay)
REDIS = web.AppKey("redis", Redis)

# A status read is a handful of round trips; past this, Redis is as good as unreachable for the caller.
STATUS_TIMEOUT_S = 5.0
# A scrape must answer well within Prometheus' scrape timeout (10 s by default), Redis or not.
GAUGES_TIMEOUT_S = 2.0


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
    if APPS_PATH in path:
        if request.method == "POST" and is_endpoint_path(path):
            return await relay.completion(request)
        return await serve_app_docs(relay, request)
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
    """Health, readiness, metrics, deployment status and the dashboard, on a port that is not exposed publicly.

    With `token`, everything but the health probes and the page's files requires it (`Authorization: Bearer`)."""
    app = web.Application(middlewares=[require_token(token)] if token else [])
    app[RELAY] = relay
    app[REDIS] = redis
    app.on_response_prepare.append(on_prepare)  # Server: tiffin here too (no version for a scanner)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/api/status", _status_all)
    app.router.add_get("/api/status/{name}", _status_one)
    app.router.add_get("/api/dashboard", _dashboard_all)
    app.router.add_get("/api/dashboard/{name}", _dashboard_one)
    add_page_routes(app)
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
    """This interceptor's own metrics, then the deployments' gauges read from Redis now (left out without it)."""
    shared = await gauges.exposition(request.app[REDIS], request.app[RELAY].router.deployments, GAUGES_TIMEOUT_S)
    body = generate_latest(metrics.REGISTRY) + shared
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _status_all(request: web.Request) -> web.Response:
    """Every deployment of this interceptor's config, in config order."""
    return await _status(request, request.app[RELAY].router.deployments)


async def _status_one(request: web.Request) -> web.Response:
    found = _deployment(request)
    if found is None:
        return _unknown(request)
    return await _status(request, [found], single=True)


def _deployment(request: web.Request) -> Deployment | None:
    name = request.match_info["name"]
    return next((d for d in request.app[RELAY].router.deployments if d.name == name), None)


def _unknown(request: web.Request) -> web.Response:
    return error_response(NotFound(f"no deployment named '{request.match_info['name']}'", code="deployment_not_found"))


def _redis_unavailable(exc: BaseException) -> web.Response:
    log.warning("status_redis_unreachable", error=str(exc) or type(exc).__name__)
    message = "redis is unreachable, so deployment status is unknown"
    return web.json_response(error_body(message, "server_error", "redis_unavailable"), status=503)


async def _dashboard_all(request: web.Request) -> web.Response:
    """The dashboard's overview: every deployment of this interceptor's config, in config order, and totals."""
    try:
        async with asyncio.timeout(STATUS_TIMEOUT_S):
            data = await summary(request.app[REDIS], request.app[RELAY].router.deployments)
    except (RedisError, OSError, TimeoutError) as exc:
        return _redis_unavailable(exc)
    return web.json_response(data)


async def _dashboard_one(request: web.Request) -> web.Response:
    """One deployment in detail: settings, replicas, cold starts and the last hour's series."""
    found = _deployment(request)
    if found is None:
        return _unknown(request)
    try:
        async with asyncio.timeout(STATUS_TIMEOUT_S):
            data = await detail(request.app[REDIS], found)
    except (RedisError, OSError, TimeoutError) as exc:
        return _redis_unavailable(exc)
    return web.json_response(data)


async def _status(request: web.Request, deployments: list[Deployment], single: bool = False) -> web.Response:
    redis = request.app[REDIS]
    try:
        async with asyncio.timeout(STATUS_TIMEOUT_S):
            statuses = await read_statuses(redis, deployments)
            pool = None if single else await read_report(redis)
    except (RedisError, OSError, TimeoutError) as exc:
        return _redis_unavailable(exc)
    if single:
        return web.json_response(statuses[0].to_json())
    body = {"deployments": [s.to_json() for s in statuses], "runner_pool": report_json(pool), "at_ms": now_ms()}
    return web.json_response(body)
