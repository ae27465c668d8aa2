"""What every public request passes through: a request id, the client's address, and a catch-all for errors.

Every response (errors included) carries `X-Request-Id` and `Server: tiffin`; nothing ever answers text/plain
or shows internal detail: a bug becomes an OpenAI-shaped 500 without detail, logged once with the request id.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.http import HttpVersion11

from interceptor.config import EdgeSettings
from interceptor.forwarding import Forwarding, forwarding
from interceptor.server import SERVER_NAME
from tiffin.contracts.errors import error_response
from tiffin.contracts.exceptions import BadRequest, PayloadTooLarge, RequestError, ServerFault

log = structlog.get_logger("interceptor")

REQUEST_ID = web.RequestKey("request_id", str)
FORWARDING = web.RequestKey("forwarding", Forwarding)
EDGE = web.AppKey("edge", EdgeSettings)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id(request: web.Request) -> str:
    """The id the edge gave this request (returned as X-Request-Id, carried to the replica, in every log line)."""
    return request.get(REQUEST_ID) or uuid.uuid4().hex


def client_of(request: web.Request) -> Forwarding:
    """The client as the edge sees it (after trusted proxies) and the X-Forwarded-* to pass on."""
    found = request.get(FORWARDING)
    if found is None:
        found = forwarding(request.remote, request.scheme, request.host, request.headers, ())
    return found


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Name the request, find its client, and turn anything unexpected into an OpenAI-shaped error."""
    rid = uuid.uuid4().hex
    request[REQUEST_ID] = rid
    settings = request.app.get(EDGE) or EdgeSettings()
    found = forwarding(request.remote, request.scheme, request.host, request.headers, settings.trusted_proxies)
    request[FORWARDING] = found
    # Bound and reset by token: structlog's bound_contextvars would also copy and scan the whole context twice.
    bound = structlog.contextvars.bind_contextvars(request_id=rid, client=found.client)
    try:
        try:
            return await handler(request)
        except RequestError as exc:
            return error_response(exc, rid)
        except web.HTTPRequestEntityTooLarge:
            return error_response(PayloadTooLarge("request body is too large"), rid)
        except web.HTTPException as exc:
            # aiohttp's own refusals (from routing or body reading) in the OpenAI shape, never text/plain.
            if exc.status >= 500:
                return error_response(ServerFault("the server failed to handle this request"), rid)
            error = BadRequest(exc.reason or "bad request", code="bad_request")
            error.status = exc.status
            return error_response(error, rid)
        except ConnectionError:
            raise  # the client went away: nothing to answer
        except Exception as exc:
            # A bug: logged once, with its traceback and the request id; the client gets no detail.
            log.error("unhandled_error", path=request.path, exc_info=exc)
            return error_response(ServerFault("the server failed to handle this request"), rid)
    finally:
        structlog.contextvars.reset_contextvars(**bound)


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every public response carries; and HTTP/1.0 streams end with the connection."""
    response.headers["Server"] = SERVER_NAME
    if "X-Request-Id" not in response.headers:
        response.headers["X-Request-Id"] = request_id(request)
    if request.version < HttpVersion11 and response.content_length is None:
        # HTTP/1.0 has no chunked encoding: a body of unknown length ends only when the connection closes
        # (aiohttp 3.14 would otherwise leave it open, and the client would wait for an end that never comes).
        response.force_close()
