"""The API server's aiohttp app: OpenAI endpoints forwarded to a ready runner, streamed back as they arrive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from runtime.api.apps.routes import AppServer
from runtime.api.balancer import Balancer, Lease
from runtime.api.load import LoadReporter
from runtime.config import ApiSettings
from tiffin.common.metric_children import Children
from tiffin.common.redis_conn import connect
from tiffin.contracts.config import Deployment
from tiffin.contracts.errors import error_response, sse_error_event
from tiffin.contracts.exceptions import (
    BadRequest,
    Draining,
    MethodNotAllowed,
    NoRunner,
    NotFound,
    PayloadTooLarge,
    RequestError,
    ServerFault,
    UpstreamFailed,
    UpstreamTimeout,
)
from tiffin.contracts.frames import COMPLETION_PATHS, NOT_SERVED_HEADER, REPLY_HEADERS, WAIT_DEADLINE_HEADER
from tiffin.contracts.load import RunnerLoad
from tiffin.contracts.queue import SavedResult, save_result
from tiffin.contracts.registry import Registry

log = structlog.get_logger("runtime.api")

# Framing and connection headers belong to each hop; the client already decompressed the body.
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "date", "server"}


class Metrics:
    """This API server's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tiffin_api_requests", "Requests answered, by runner and HTTP status.", ["runner", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "tiffin_api_runner_in_flight", "Requests in flight from this API server, per runner.", ["runner"],
            registry=self.registry,
        )  # fmt: skip
        self.runner_wait = Histogram(
            "tiffin_api_runner_wait_seconds", "Time a request waited for a runner slot.",
            buckets=(0.001, 0.01, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600), registry=self.registry,
        )  # fmt: skip
        self.waiting = Gauge(
            "tiffin_api_waiting_requests", "Requests waiting for a runner or a free slot.", registry=self.registry
        )
        self.runner_failures = Counter(
            "tiffin_api_runner_failures", "Failed attempts at a runner, by kind.", ["runner", "kind"],
            registry=self.registry,
        )  # fmt: skip
        self.child = Children()
        """Children of the per-request metrics, looked up once."""


SETTINGS = web.AppKey("settings", ApiSettings)
METRICS = web.AppKey("metrics", Metrics)
HTTP = web.AppKey("http", aiohttp.ClientSession)
REDIS = web.AppKey("redis", Redis)
BALANCER = web.AppKey("balancer", Balancer)


@dataclass
class _Outcome:
    """What one request's log line and metrics say."""

    runner: str | None = None
    status: int | None = None
    error: str | None = None


def create_app(settings: ApiSettings) -> web.Application:
    """The app for one deployment; Redis and the upstream session open on startup and close on cleanup."""
    app = web.Application(client_max_size=settings.deployment.limits.max_body_bytes, middlewares=[_errors])
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app.cleanup_ctx.append(_resources)
    app.on_shutdown.append(_drain)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    for path in COMPLETION_PATHS:
        app.router.add_post(path, complete)
    if settings.deployment.app is not None:
        AppServer(
            settings.deployment, lambda: app[BALANCER], lambda: app[HTTP], lambda: app[REDIS], settings.result_ttl_s
        ).mount(app)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    dep = settings.deployment
    # Saves of one loop turn go out together (requests finish in step under load); it sends no blocking command.
    redis = connect(settings.redis_url, batched=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=dep.limits.upstream_timeout_s)
    # No pool limit: the balancer already bounds requests per runner, a second bound would queue unseen.
    # Idle connections go before vLLM's server (uvicorn) drops them at 5 s, so a reused one is rarely dead.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4)
    http = aiohttp.ClientSession(timeout=timeout, connector=connector)
    app[REDIS] = redis
    app[HTTP] = http
    registry = Registry(redis, dep.name, "runner", settings.heartbeat_ttl_s)
    balancer = app[BALANCER] = Balancer(registry.ready, dep.runner.concurrency)
    app[METRICS].waiting.set_function(lambda: balancer.waiting)
    # Runs until cleanup, after on_shutdown and the in-flight requests: they count until they end.
    load = RunnerLoad(redis, dep.name, settings.heartbeat_ttl_s)
    reporter = LoadReporter(balancer, load, settings.replica_id, settings.heartbeat_ttl_s)
    reporting = asyncio.create_task(reporter.run(), name="load-report")
    yield
    # The flag as well as cancel(): on Python 3.11 asyncio.wait_for can swallow a cancellation.
    reporter.stop()
    reporting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reporting
    await reporter.withdraw()
    await http.close()
    await redis.aclose()
    log.info("api_stopped")


async def _drain(app: web.Application) -> None:
    """On SIGTERM: requests still waiting for a runner get 503 now; those at a runner may finish."""
    log.info("api_draining", waiting=app[BALANCER].waiting)
    app[BALANCER].drain()


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    """aiohttp's own errors (unknown path, wrong method) in OpenAI's shape too, and a bug as a 500 without detail."""
    rid = request.headers.get("X-Request-Id")
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return error_response(NotFound(f"Invalid URL ({request.method} {request.path})", code="unknown_url"), rid)
    except web.HTTPMethodNotAllowed:
        return error_response(MethodNotAllowed(f"{request.method} is not allowed on {request.path}"), rid)
    except RequestError as exc:
        return error_response(exc, rid)
    except (web.HTTPException, ConnectionError):
        raise
    except Exception as exc:
        # A bug: its traceback goes to this log with the request id; the client (via the proxy) gets no detail.
        log.error("unhandled_error", request_id=rid, path=request.path, exc_info=exc)
        return error_response(ServerFault("the API server failed to handle this request"), rid)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def models(request: web.Request) -> web.Response:
    names = sorted(request.app[SETTINGS].deployment.accepted_models)
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "tiffin"} for name in names]
    return web.json_response({"object": "list", "data": data})


async def complete(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions and /v1/completions: to a runner and back, streamed."""
    rid = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    deployment = request.app[SETTINGS].deployment
    outcome = _Outcome()
    started = time.monotonic()
    try:
        body = await _read_body(request, deployment)
        return await _forward(request, body, _deadline(request, deployment), rid, outcome)
    except RequestError as exc:
        outcome.status, outcome.error = exc.status, exc.code or exc.error_type
        response = error_response(exc, rid)
        if isinstance(exc, Draining):
            response.headers[NOT_SERVED_HEADER] = "draining"  # no runner saw it: another replica should serve it
        return response
    except asyncio.CancelledError:
        outcome.status, outcome.error = 499, "client_gone"  # the client closed the connection (nginx's 499)
        raise
    finally:
        stats = request.app[METRICS]
        stats.child(stats.requests, outcome.runner or "none", str(outcome.status)).inc()
        log.info(
            "request", request_id=rid, path=request.path, runner=outcome.runner, status=outcome.status,
            error=outcome.error, ms=round((time.monotonic() - started) * 1000, 1),
        )  # fmt: skip


async def _read_body(request: web.Request, deployment: Deployment) -> bytes:
    """The body as sent, once it is known to be a JSON object for this deployment's model."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        limit = deployment.limits.max_body_bytes
        raise PayloadTooLarge(f"request body is larger than {limit} bytes") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    model = data.get("model")
    if model is None or model == deployment.model_name:
        return raw
    if not isinstance(model, str):
        raise BadRequest("'model' must be a string")
    if model not in deployment.accepted_models:
        raise NotFound(f"The model '{model}' does not exist here; available: {sorted(deployment.accepted_models)}")
    # An alias (routing.models): the engine knows only the served name.
    return json.dumps({**data, "model": deployment.model_name}).encode()


def _deadline(request: web.Request, deployment: Deployment) -> float:
    """When to give up waiting for a runner, on the time.monotonic() clock."""
    raw = request.headers.get(WAIT_DEADLINE_HEADER)
    if raw is None:
        return time.monotonic() + deployment.limits.wait_timeout_s
    try:
        epoch_ms = float(raw)
    except ValueError as exc:
        raise BadRequest(f"{WAIT_DEADLINE_HEADER} must be epoch milliseconds") from exc
    return time.monotonic() + (epoch_ms / 1000 - time.time())


_CONNECT_RETRIES = 10
"""Refused connections tolerated per request (each runner is then skipped for the balancer's suspect time)."""


async def _forward(
    request: web.Request, body: bytes, deadline: float, rid: str, outcome: _Outcome
) -> web.StreamResponse:
    app = request.app
    balancer, stats = app[BALANCER], app[METRICS]
    unreachable: str | None = None
    failures = 0
    while True:
        try:
            # After a refused connection nothing has reached the runner, so the request may wait (until its
            # wait deadline) for any runner that answers: another one, or the crashed one's replacement. The
            # one that refused is skipped for a while (`suspect`), not for good: its replacement has its id.
            lease = await balancer.acquire(deadline)
        except NoRunner as exc:
            if unreachable is not None:
                # Which runner, and why, is in the log (runner_unreachable); the client learns no internal address.
                raise UpstreamFailed("no runner could be reached before the wait deadline") from exc
            raise
        outcome.runner = lease.runner_id
        stats.runner_wait.observe(lease.waited_s)
        stats.child(stats.in_flight, lease.runner_id).set(balancer.load(lease.runner_id))
        try:
            upstream = await app[HTTP].post(
                lease.url + request.path,
                data=body,
                headers={"Content-Type": request.headers.get("Content-Type", "application/json"), "X-Request-Id": rid},
            )
        except aiohttp.SocketTimeoutError as exc:
            _release(app, lease)
            stats.runner_failures.labels(lease.runner_id, "timeout").inc()
            log.warning("runner_timeout", request_id=rid, runner=lease.runner_id)
            raise UpstreamTimeout("the runner did not start answering in time") from exc
        except aiohttp.ClientConnectionError as exc:
            _release(app, lease)
            balancer.suspect(lease.runner_id)
            stats.runner_failures.labels(lease.runner_id, "connect").inc()
            log.warning("runner_unreachable", request_id=rid, runner=lease.runner_id, error=str(exc) or repr(exc))
            unreachable, failures = lease.runner_id, failures + 1
            # A refused connection never reached an engine: retrying is free. A connection dropped after the
            # request was sent may have been this request's doing (a poison request), so it gets one retry only.
            if failures >= (_CONNECT_RETRIES if isinstance(exc, aiohttp.ClientConnectorError) else 2):
                raise UpstreamFailed("the runner failed") from exc
            continue
        except BaseException:
            _release(app, lease)
            raise
        try:
            return await _relay(request, upstream, rid, outcome)
        finally:
            upstream.release()  # closes the connection if the body was not read to the end
            _release(app, lease)


def _release(app: web.Application, lease: Lease) -> None:
    lease.release()
    stats = app[METRICS]
    stats.child(stats.in_flight, lease.runner_id).set(app[BALANCER].load(lease.runner_id))


async def _relay(
    request: web.Request, upstream: aiohttp.ClientResponse, rid: str, outcome: _Outcome
) -> web.StreamResponse:
    """Send the runner's head, then each chunk as it arrives (a non-streamed answer whole, saved first)."""
    headers = CIMultiDict((k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS)
    headers["X-Request-Id"] = rid
    chunks = upstream.content.iter_any().__aiter__()
    first = b""
    if upstream.content_type != "text/event-stream":
        first, whole = await _read_answer(request, upstream, chunks, rid)
        if whole:
            await _save(request, rid, upstream.status, headers, first)
            outcome.status = upstream.status
            # Head and body in one write (a streamed response would take three).
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=first)
    resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    outcome.status = upstream.status
    await resp.prepare(request)
    data = first
    while True:
        if data:
            try:
                await resp.write(data)
            except ConnectionResetError:  # the client went away; releasing the upstream stops the generation
                outcome.error = "client_gone"
                return resp
        try:
            data = await chunks.__anext__()
        except StopAsyncIteration:
            break
        except (aiohttp.ClientError, TimeoutError) as exc:
            return await _broken(request, resp, upstream, rid, outcome, exc)
    await resp.write_eof()
    return resp


async def _read_answer(
    request: web.Request, upstream: aiohttp.ClientResponse, chunks: AsyncIterator[bytes], rid: str
) -> tuple[bytes, bool]:
    """Read a non-streamed answer up to the saving limit: (bytes read, whether that is all of it).

    Before its head goes out: a runner that fails now is answered 502 (nothing relayed yet, never replayed).
    """
    limit = request.app[SETTINGS].result_max_bytes
    body = bytearray()
    while len(body) <= limit:
        try:
            body += await chunks.__anext__()
        except StopAsyncIteration:
            return bytes(body), True
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("runner_failed_mid_answer", request_id=rid, error=str(exc) or repr(exc))
            raise UpstreamFailed("the runner failed") from exc
    return bytes(body), False


async def _save(request: web.Request, rid: str, status: int, headers: CIMultiDict[str], body: bytes) -> None:
    """Save a runner's whole answer before relaying it: if this replica or its proxy dies before the answer is
    acknowledged, the replica that takes the request again answers from this instead of running it twice."""
    settings = request.app[SETTINGS]
    kept = {k.lower(): v for k, v in headers.items() if k.lower() in REPLY_HEADERS}
    result = SavedResult(status, kept, body)
    deadline = time.monotonic() + _SAVE_RIDE_OUT_S
    pause = 0.2
    while True:
        try:
            await save_result(request.app[REDIS], rid, result, settings.result_ttl_s)
            return
        except (RedisError, OSError) as exc:
            if time.monotonic() + pause > deadline:
                # Relay anyway: the answer is here. Only a redelivery of this request could run it again.
                log.warning("result_not_saved", request_id=rid, error=str(exc) or repr(exc))
                return
            await asyncio.sleep(pause)  # Redis restarting: its proxy could not relay the answer before it is back
            pause = min(pause * 2, 2.0)


_SAVE_RIDE_OUT_S = 15.0
"""How long saving an answer waits for an unreachable Redis (a restart) before the answer is relayed unsaved."""


async def _broken(
    request: web.Request,
    resp: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    rid: str,
    outcome: _Outcome,
    exc: BaseException,
) -> web.StreamResponse:
    """The runner failed after the head went out: end the stream with an error, never replay it."""
    kind = "timeout" if isinstance(exc, TimeoutError) else "broken"
    outcome.error = f"stream_{kind}"
    request.app[METRICS].runner_failures.labels(outcome.runner or "none", kind).inc()
    log.warning("stream_broken", request_id=rid, runner=outcome.runner, error=str(exc) or repr(exc))
    if upstream.content_type == "text/event-stream":
        # What vLLM itself does on a failure mid-stream: an error event, then a clean end.
        try:
            await resp.write(sse_error_event(f"the runner failed mid-stream: {kind}", "upstream_failed"))
            await resp.write_eof()
        except ConnectionResetError:
            pass
    elif request.transport is not None:
        request.transport.close()  # a cut body must not look complete: no final chunk
    return resp
