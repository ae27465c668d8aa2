"""Request bodies a hostile client sends: every one is a 4xx in the OpenAI shape, never a 500, and nothing queued."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import pytest
from redis.asyncio import Redis

from tests.interceptor.conftest import StandInProxy, deployment, running_edge
from tests.interceptor.rawhttp import exchange, port_of, request
from tests.interceptor.test_edge_http import rejected
from tiffin.contracts import keys

CHAT = "/v1/chat/completions"
GOOD = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}).encode()


def post(body: bytes, **headers: str) -> bytes:
    return request("POST", CHAT, body, {"Content-Type": "application/json", "Connection": "close", **headers})


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"[" * 5000 + b"]" * 5000, {}, 400, "invalid_json"),
        (b'{"model": "smollm2", "n": ' + b"9" * 5000 + b"}", {}, 400, "invalid_json"),
        (b'{"model": "smollm2", "n": -' + b"9" * 5000 + b"}", {}, 400, "invalid_json"),
        (b'{"model": "smollm2", "temperature": NaN}', {}, 400, "invalid_json"),
        (b'{"model": "smol\xff\xfelm2"}', {}, 400, "invalid_json"),
        (b'{"model": ', {}, 400, "invalid_json"),
        (b'["a list"]', {}, 400, "invalid_json"),
        (b'{"model": 42}', {}, 400, None),
        (b"not gzip at all", {"Content-Encoding": "gzip"}, 400, "bad_encoding"),
        (gzip.compress(GOOD)[:-8], {"Content-Encoding": "gzip"}, 400, "bad_encoding"),
        (gzip.compress(b"\0" * 50_000_000), {"Content-Encoding": "gzip"}, 413, "request_too_large"),
        (zlib.compress(b" " * 50_000_000), {"Content-Encoding": "deflate"}, 413, "request_too_large"),
        (GOOD, {"Content-Encoding": "br"}, 415, "unsupported_content_encoding"),
        (GOOD, {"Content-Encoding": "gzip, gzip"}, 415, "unsupported_content_encoding"),
        (b"{" + b" " * 2_000_000 + b"}", {}, 413, "request_too_large"),
    ],
    ids=[
        "deep-nesting", "huge-int", "huge-negative-int", "nan", "invalid-utf8", "truncated", "not-an-object",
        "model-not-a-string", "bad-gzip", "truncated-gzip", "gzip-bomb", "deflate-bomb", "unknown-encoding",
        "stacked-encodings", "too-large",
    ],
)  # fmt: skip
async def test_hostile_bodies_get_4xx_in_the_openai_shape(
    redis: Redis, body: bytes, headers: dict[str, str], status: int, code: str | None
) -> None:
    async with running_edge(redis, [deployment("smollm2")]) as edge:
        reply = await exchange(port_of(edge.url), post(body, **headers))

        assert reply.status == status, reply.body[:300]
        assert reply.headers["server"] == "tiffin"
        assert reply.headers["x-request-id"]
        error = reply.json()["error"]
        assert error["code"] == code
        assert "Traceback" not in error["message"] and "/" not in error["message"]
        assert await redis.xlen(keys.queue("smollm2")) == 0  # nothing reached the queue


async def test_a_gzip_bomb_is_counted_and_never_inflated_past_the_limit(redis: Redis) -> None:
    async with running_edge(redis, [deployment("smollm2", max_body_bytes=65_536)]) as edge:
        before = rejected("body_too_large", "-")
        reply = await exchange(
            port_of(edge.url), post(gzip.compress(b"\0" * 10_000_000), **{"Content-Encoding": "gzip"})
        )
        assert reply.status == 413
        assert rejected("body_too_large", "-") == before + 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "identity"])
async def test_compressed_bodies_reach_the_replica_decoded(redis: Redis, encoding: str) -> None:
    compress = {"gzip": gzip.compress, "deflate": zlib.compress, "identity": lambda b: b}[encoding]
    async with running_edge(redis, [deployment("smollm2")]) as edge:
        proxy = StandInProxy(redis, "smollm2")
        sent = asyncio.create_task(exchange(port_of(edge.url), post(compress(GOOD), **{"Content-Encoding": encoding})))
        delivery = await proxy.take_one()
        assert delivery.envelope.body == GOOD
        assert "content-encoding" not in delivery.envelope.headers
        await proxy.answer(delivery)
        assert (await sent).status == 200
