"""OpenAI-shaped error bodies: the one place a `RequestError` becomes an HTTP answer."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tiffin.contracts.exceptions import RequestError


def error_body(message: str, error_type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """The JSON body OpenAI clients expect: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(exc: RequestError, request_id: str | None = None) -> web.Response:
    """Turn a `RequestError` into its HTTP response (status, Retry-After, request id)."""
    headers = exc.response_headers()
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if request_id:
        headers["X-Request-Id"] = request_id
    return web.Response(
        status=exc.status,
        body=json.dumps(error_body(exc.message, exc.error_type, exc.code)).encode(),
        content_type="application/json",
        headers=headers,
    )


def sse_error_event(message: str, code: str) -> bytes:
    """An SSE event that ends a stream whose head has already gone out."""
    return b"data: " + json.dumps(error_body(message, "server_error", code)).encode() + b"\n\n"
