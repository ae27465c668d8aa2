"""The interceptor's two aiohttp applications: the public edge and the admin listener."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from interceptor import metrics
from interceptor.relay import Relay
from tiffin.errors import error_response
from tiffin.exceptions import MethodNotAllowed, NotFound, RequestError
from tiffin.frames import COMPLETION_PATHS

RELAY = web.AppKey("relay", Relay)
REDIS = web.AppKey("redis", Redis)


def public_app(relay: Relay) -> web.Application:
    """Every path is routed by host and prefix, so one catch-all handler dispatches by suffix."""
    app = web.Application()
    app[RELAY] = relay
    app.router.add_route("*", "/{tail:.*}", _dispatch)
    return app


async def _dispatch(request: web.Request) -> web.StreamResponse:
    relay = request.app[RELAY]
    path = request.path
    if path.endswith(COMPLETION_PATHS):
        if request.method != "POST":
            return error_response(MethodNotAllowed(f"{request.method} is not allowed on {path}; use POST"))
        return await relay.completion(request)
    if path.endswith("/v1/models"):
        try:
            if request.method != "GET":
                raise MethodNotAllowed(f"{request.method} is not allowed on {path}; use GET")
            route = relay.router.match(request.host, path)
        except RequestError as exc:
            return error_response(exc)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "tiffin"} for m in route.models()]
        return web.json_response({"object": "list", "data": data})
    return error_response(NotFound(f"no endpoint at {path}", code="route_not_found"))


def admin_app(relay: Relay, redis: Redis) -> web.Application:
    """Health, readiness and metrics, on a port that is not exposed publicly."""
    app = web.Application()
    app[RELAY] = relay
    app[REDIS] = redis
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    if request.app[RELAY].draining:
        return web.json_response({"status": "draining"}, status=503)
    try:
        await request.app[REDIS].ping()
    except (RedisError, OSError) as exc:
        return web.json_response({"status": "redis unreachable", "error": str(exc)}, status=503)
    return web.json_response({"status": "ready"})


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})
