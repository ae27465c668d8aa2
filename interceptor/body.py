"""Reading a request body from a client that may be slow or hostile: bounded in time, size and decoded size.

`Content-Encoding: gzip` or `deflate` bodies are decoded here (aiohttp's own decoding is off on the public
listener), incrementally and never past the size limit, so a small "gzip bomb" gets 413 without ever being
inflated in memory; corrupt ones get 400 and other encodings 415. The JSON parse turns every way client bytes
can break Python's parser (depth, giant integers, invalid UTF-8, NaN) into 400.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any

from aiohttp import web

from tiffin.contracts.exceptions import BadRequest, PayloadTooLarge, RequestTimeout, UnsupportedEncoding

CHUNK_BYTES = 65_536
IDENTITY = ("", "identity")
GZIP = ("gzip", "x-gzip")
DEFLATE = ("deflate",)


class _Decoder:
    """Incremental gzip/deflate decoding that refuses to produce more than `limit` bytes."""

    def __init__(self, encoding: str, limit: int) -> None:
        # gzip: gzip header only; deflate: zlib-wrapped or gzip (32 + window bits detects either).
        self._inflate = zlib.decompressobj((16 if encoding in GZIP else 32) + zlib.MAX_WBITS)
        self._limit = limit
        self._size = 0

    def feed(self, data: bytes) -> bytes:
        if self._inflate.eof:
            if data:
                raise BadRequest("the compressed request body has data after its end", code="bad_encoding")
            return b""
        budget = self._limit - self._size
        try:
            out = self._inflate.decompress(data, budget + 1)
        except zlib.error as exc:
            raise BadRequest("the request body is not valid for its Content-Encoding", code="bad_encoding") from exc
        self._size += len(out)
        if self._size > self._limit or self._inflate.unconsumed_tail:
            raise PayloadTooLarge(f"the decompressed request body exceeds {self._limit} bytes")
        if self._inflate.unused_data:
            raise BadRequest("the compressed request body has data after its end", code="bad_encoding")
        return out

    def finish(self) -> None:
        if not self._inflate.eof:
            raise BadRequest("the compressed request body is truncated", code="bad_encoding")


def content_encoding(request: web.BaseRequest) -> str:
    """The request's single content coding, lower-cased; anything this edge cannot decode is 415."""
    raw = request.headers.get("Content-Encoding", "").strip().lower()
    if raw in IDENTITY or raw in GZIP or raw in DEFLATE:
        return raw
    raise UnsupportedEncoding("Content-Encoding must be gzip, deflate or identity")


async def read_body(request: web.BaseRequest, limit: int, timeout_s: float) -> bytes:
    """The whole body, decoded; 413 past `limit` bytes (sent or decoded), 408 if it takes over `timeout_s`."""
    encoding = content_encoding(request)
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    decoder = None if encoding in IDENTITY else _Decoder(encoding, limit)
    if request.content.is_eof():
        # The whole body came with its head (nearly every request): nothing to wait for, so no timer and no
        # async iteration; the same limits, decoding and errors as below.
        try:
            raw = request.content.read_nowait()
        except web.RequestPayloadError as exc:
            raise BadRequest("the request body is malformed", code="bad_body") from exc
        if len(raw) > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        if decoder is None:
            return raw
        decoded = decoder.feed(raw)
        decoder.finish()
        return decoded
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_chunked(CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body exceeds {limit} bytes")
                chunks.append(decoder.feed(chunk) if decoder else chunk)
    except TimeoutError as exc:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g}s") from exc
    except web.RequestPayloadError as exc:
        # Broken chunked framing or a body shorter than its Content-Length.
        raise BadRequest("the request body is malformed", code="bad_body") from exc
    if decoder is not None:
        decoder.finish()
    return b"".join(chunks)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; every malformed input is a 400 with a short reason, never a 500."""
    try:
        payload = json.loads(body, parse_constant=_no_constants)
    except RecursionError as exc:
        raise BadRequest("request body is nested too deeply", code="invalid_json") from exc
    except UnicodeDecodeError as exc:
        raise BadRequest("request body is not valid UTF-8", code="invalid_json") from exc
    except json.JSONDecodeError as exc:
        message = f"request body is not valid JSON: {exc.msg} at position {exc.pos}"
        raise BadRequest(message, code="invalid_json") from exc
    except ValueError as exc:
        # Integers past Python's digit limit (sys.get_int_max_str_digits), NaN and Infinity.
        raise BadRequest("request body holds a number that is not valid here", code="invalid_json") from exc
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    return payload
