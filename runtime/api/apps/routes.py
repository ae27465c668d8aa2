"""An application's endpoints on the API server: typed bodies in, typed answers or SSE streams out.

Errors: a body that does not fit the endpoint's model -> 400 naming the field (what the OpenAI endpoints answer,
via vLLM); `tiffin.HTTPError` -> its status and message; anything else the application raises -> 500 with no
detail (the traceback is logged with the request id). After a stream's head, an error ends it with an
OpenAI-shaped error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from runtime.api.apps.llm import CURRENT, Call, RunnerLLM
from runtime.api.balancer import Balancer
from tiffin.app import App, HTTPError
from tiffin.apps.loading import Endpoint, endpoints_of, load_app
from tiffin.apps.openapi import openapi_document
from tiffin.contracts.apps import publish_openapi
from tiffin.contracts.config import Deployment
from tiffin.contracts.errors import error_body, error_response, sse_error_event
from tiffin.contracts.exceptions import Draining, NotFound, PayloadTooLarge, RequestError, ServerFault
from tiffin.contracts.frames import NOT_SERVED_HEADER, WAIT_DEADLINE_HEADER
from tiffin.contracts.queue import SavedResult, save_result

log = structlog.get_logger("runtime.api.apps")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 409: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error"}  # fmt: skip
"""OpenAI's error types by status; other 4xx are invalid requests, 5xx server errors."""


class AppServer:
    """One deployment's application in one API server: its instance, endpoints and request handler."""

    def __init__(
        self,
        deployment: Deployment,
        balancer: Callable[[], Balancer],
        http: Callable[[], aiohttp.ClientSession],
        redis: Callable[[], Redis],
        result_ttl_s: float,
    ) -> None:
        assert deployment.app is not None
        self.deployment = deployment
        self.cls: type[App] = load_app(deployment.app)  # AppError stops the API server before it listens
        self.endpoints: dict[str, Endpoint] = endpoints_of(self.cls)
        self.openapi = openapi_document(self.cls, deployment)
        self.instance = self.cls()
        self.instance.llm = RunnerLLM(balancer, http, deployment.model_name, deployment.limits.wait_timeout_s)
        self._redis = redis
        self._result_ttl_s = result_ttl_s

    def mount(self, app: web.Application) -> None:
        """Add the routes and the start/stop hooks (after the app's own resources open)."""
        app.router.add_post("/v1/apps/{deployment}/{endpoint}", self.handle)
        app.router.add_get("/v1/apps/{deployment}/openapi.json", self.describe)
        app.on_startup.append(self._start)
        app.on_cleanup.insert(0, self._stop)  # before Redis and the session close

    async def _start(self, app: web.Application) -> None:
        await self.instance.setup()
        try:
            await publish_openapi(self._redis(), self.deployment.name, self.openapi)
        except (RedisError, OSError) as exc:  # the docs page shows the last description until the next start
            log.warning("openapi_not_published", error=str(exc) or repr(exc))
        log.info("app_ready", app=self.cls.__name__, endpoints=list(self.endpoints))

    async def _stop(self, app: web.Application) -> None:
        await self.instance.close()

    async def describe(self, request: web.Request) -> web.Response:
        """GET .../openapi.json (the interceptor serves the published copy; this one is for direct use)."""
        self._check_deployment(request)
        return web.json_response(self.openapi)

    def _check_deployment(self, request: web.Request) -> None:
        if request.match_info["deployment"] != self.deployment.name:
            raise NotFound(f"no application named '{request.match_info['deployment']}' here", code="unknown_app")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """POST .../v1/apps/{deployment}/{endpoint}: validate, run the endpoint, answer or stream."""
        rid = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        call = Call(rid, _deadline(request, self.deployment))
        token = CURRENT.set(call)
        started = time.monotonic()
        name = request.match_info["endpoint"]
        status: int | None = None
        try:
            response = await self._serve(request, name, call)
            status = response.status
            return response
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's 499)
            raise
        finally:
            CURRENT.reset(token)
            log.info("app_request", request_id=rid, endpoint=name, status=status,
                     ms=round((time.monotonic() - started) * 1000, 1))  # fmt: skip

    async def _serve(self, request: web.Request, name: str, call: Call) -> web.StreamResponse:
        try:
            self._check_deployment(request)
            endpoint = self.endpoints.get(name)
            if endpoint is None:
                known = ", ".join(self.endpoints)
                raise NotFound(f"no endpoint '{name}'; this application has: {known}", code="unknown_endpoint")
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge as exc:
                raise PayloadTooLarge(
                    f"request body is larger than {self.deployment.limits.max_body_bytes} bytes"
                ) from exc
            try:
                argument = endpoint.input.model_validate_json(raw or b"{}")
            except ValidationError as exc:
                return _invalid(exc, call.request_id)
            method = getattr(self.instance, endpoint.method)
            if endpoint.stream:
                return await self._stream(request, endpoint, method, argument, call)
            result = await method(argument)
            body = endpoint.output_adapter.dump_json(result)
            await self._save(call.request_id, body)
            return web.Response(body=body, content_type="application/json", headers={"X-Request-Id": call.request_id})
        except HTTPError as exc:
            return _http_error(exc, call.request_id)
        except RequestError as exc:
            response = error_response(exc, call.request_id)
            if isinstance(exc, Draining) and not call.leased:
                response.headers[NOT_SERVED_HEADER] = "draining"  # no runner saw it: another replica serves it
            return response
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as exc:
            log.error("app_failed", request_id=call.request_id, endpoint=name, exc_info=exc)
            return error_response(ServerFault(_FAILED, code="app_error"), call.request_id)

    async def _stream(
        self, request: web.Request, endpoint: Endpoint, method: Any, argument: Any, call: Call
    ) -> web.StreamResponse:
        """SSE: `data: <item>` per item, then `data: [DONE]`. The first item comes before the head, so an error
        in the application's preparation is still a plain HTTP error."""
        produced = method(argument)
        items: AsyncIterator[Any] = (await produced if asyncio.iscoroutine(produced) else produced).__aiter__()
        adapter = endpoint.output_adapter
        try:
            first: list[Any] = [await items.__anext__()]
        except StopAsyncIteration:
            first = []
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Request-Id": call.request_id})  # fmt: skip
        await response.prepare(request)
        try:
            for item in first:
                await response.write(b"data: " + adapter.dump_json(item) + b"\n\n")
            async for item in items:
                await response.write(b"data: " + adapter.dump_json(item) + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
        except ConnectionResetError:
            return response  # the client went away; closing the generator stops its LLM calls
        except HTTPError as exc:
            await _end_with(response, sse_event(exc))
        except RequestError as exc:  # no runner in time, or this API server is draining
            await _end_with(response, sse_error_event(exc.message, exc.code or exc.error_type))
        except Exception as exc:
            log.error("app_failed_mid_stream", request_id=call.request_id, endpoint=endpoint.name, exc_info=exc)
            await _end_with(response, sse_error_event(_FAILED, "app_error"))
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()
        await response.write_eof()
        return response

    async def _save(self, request_id: str, body: bytes) -> None:
        """Keep the answer until it is delivered: a replica that takes the request again relays it, not rerun it."""
        result = SavedResult(200, {"content-type": "application/json"}, body)
        try:
            await save_result(self._redis(), request_id, result, self._result_ttl_s)
        except (RedisError, OSError) as exc:
            log.warning("result_not_saved", request_id=request_id, error=str(exc) or repr(exc))


_FAILED = "the application failed; its log has the detail under this request's id"


def _deadline(request: web.Request, deployment: Deployment) -> float:
    """When the application's LLM calls stop waiting for a runner (the proxy's deadline header, epoch ms)."""
    raw = request.headers.get(WAIT_DEADLINE_HEADER)
    try:
        if raw:
            return time.monotonic() + (float(raw) / 1000 - time.time())
    except ValueError:
        pass  # a malformed header from a direct caller: the deployment's own wait applies
    return time.monotonic() + deployment.limits.wait_timeout_s


def _invalid(exc: ValidationError, request_id: str) -> web.Response:
    """400 naming each wrong field (`param`: the first one's path, as OpenAI names a wrong parameter)."""
    problems, params = [], []
    for err in exc.errors(include_url=False):
        where = ".".join(str(part) for part in err["loc"])
        params.append(where or None)
        problems.append(f"{where}: {err['msg']}" if where else err["msg"])
    message = "invalid request body: " + "; ".join(problems)
    body = error_body(message, "invalid_request_error", "invalid_value", params[0] if params else None)
    return web.json_response(body, status=400, headers={"X-Request-Id": request_id})


def _http_error(exc: HTTPError, request_id: str) -> web.Response:
    error_type = _TYPES.get(exc.status, "invalid_request_error" if exc.status < 500 else "server_error")
    body = error_body(exc.message, error_type, exc.code, exc.param)
    return web.json_response(body, status=exc.status, headers={"X-Request-Id": request_id})


def sse_event(exc: HTTPError) -> bytes:
    """A deliberate error after a stream's head: its message and code, as an SSE error event."""
    error_type = _TYPES.get(exc.status, "invalid_request_error" if exc.status < 500 else "server_error")
    return b"data: " + json.dumps(error_body(exc.message, error_type, exc.code, exc.param)).encode() + b"\n\n"


async def _end_with(response: web.StreamResponse, event: bytes) -> None:
    with contextlib.suppress(ConnectionResetError):
        await response.write(event)
