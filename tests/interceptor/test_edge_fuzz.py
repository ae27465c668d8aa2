"""A fuzz run over raw sockets: thousands of malformed requests, then the edge still serves a correct one.

Requests are generated from a fixed seed (reproducible): odd methods, paths, versions and headers; broken
framing; bad JSON, wrong types, huge and negative numbers, deep nesting, invalid UTF-8, bad encodings. Every
answer must be below 500, JSON-shaped (except HEAD), say `Server: tiffin` and carry a request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import random
from collections import Counter
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis

from interceptor.config import EdgeSettings
from tests.interceptor.conftest import StandInProxy, deployment, running_edge
from tests.interceptor.rawhttp import RawReply, open_raw, port_of, read_reply, request

SEED = 20261130
REQUESTS = 5000
CONCURRENCY = 16

METHODS = ["GET", "POST", "POST", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO", "post",
           "G\x00ET", "", "POST /v1/models"]  # fmt: skip
PATHS = ["/v1/chat/completions", "/v1/chat/completions", "/v1/completions", "/v1/models", "/", "/v1/../../etc/passwd",
         "/%00", "/v1/chat/completions?x=%ff%fe", "*", "http://evil.example/v1/models", "//v1//models", "/ü/v1/models",
         "/v1/chat/completions/", "/" + "a" * 5000, "/v1/models#frag", "/v1/%2e%2e/models"]  # fmt: skip
VERSIONS = ["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/2.0", "HTTP/9.9", "HTTP/1", "http/1.1", "", "HTTP/1.1 extra"]
ODD_HEADERS = [
    ("X-Junk", "\x01\x02"), ("X-Long", "v" * 9000), ("Content-Type", "text/plain"),
    ("Content-Type", "application/json; charset=latin-1"), ("Content-Encoding", "gzip"), ("Content-Encoding", "br"),
    ("Content-Encoding", "deflate, gzip"), ("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "gzip, chunked"),
    ("Authorization", "Bearer \x7f\x00junk"), ("Authorization", "Basic " + "A" * 200),
    ("Host", ""), ("Host", "a b"), ("Host", "evil.example:99999"), ("X-Forwarded-For", "1.2.3.4, <script>"),
    ("Connection", "upgrade"), ("Upgrade", "h2c"), ("Expect", "100-continue"), ("Content-Length", "-1"),
    ("Content-Length", "99999999999999999999"), ("X-Request-Id", "../../x"), ("Bad Header", "x"), ("", "empty-name"),
]  # fmt: skip


def bodies(rng: random.Random) -> bytes:
    """A request body that is wrong in one of many ways (sometimes right)."""
    good: dict[str, Any] = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}
    kind = rng.randrange(22)
    if kind == 0:
        return json.dumps(good).encode()
    if kind == 1:
        return b"[" * rng.randrange(500, 20_000) + b"]" * 10
    if kind == 2:
        return b'{"model": "smollm2", "max_tokens": ' + b"9" * rng.randrange(4000, 20_000) + b"}"
    if kind == 3:
        return b'{"model": "smollm2", "temperature": -' + b"1" * rng.randrange(4300, 6000) + b".5}"
    if kind == 4:
        return json.dumps(
            {**good, "max_tokens": rng.choice([-1, 10**30, -(10**30), 1e308, "many", None, [], {}])}
        ).encode()
    if kind == 5:
        return json.dumps(
            {**good, "model": rng.choice([1, None, [], {"a": 1}, True, "", "x" * 5000, "../smollm2"])}
        ).encode()
    if kind == 6:
        return json.dumps({**good, "messages": rng.choice(["hi", 1, None, [1, 2], [{"role": 5}], {}])}).encode()
    if kind == 7:
        return b'{"model": "smol\xff\xfe\xc3(lm2", "messages": []}'
    if kind == 8:
        return b'{"model": "smollm2", "temperature": NaN, "top_p": Infinity}'
    if kind == 9:
        return json.dumps(good).encode()[: rng.randrange(1, 40)]
    if kind == 10:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    if kind == 11:
        return b""
    if kind == 12:
        return b"\xef\xbb\xbf" + json.dumps(good).encode()  # a BOM
    if kind == 13:
        return b'{"model": "smollm2", "stream": "yes", "n": -5, "stop": ' + b'"x",' * 2000 + b'"y"}'
    if kind == 14:
        nested: Any = "deep"
        for _ in range(rng.randrange(100, 900)):
            nested = {"a": nested}
        return json.dumps({**good, "extra": nested}).encode()
    if kind == 15:
        return json.dumps({**good, "messages": [{"role": "user", "content": "\ud800\udfff\u0000"}]}).encode()
    if kind == 16:
        return b'{"model": "smollm2", "model": "other", "model": 3}'
    if kind == 17:
        return b'"just a string"'
    if kind == 18:
        return b"null"
    if kind == 19:
        return b'{"model": "smollm2"}' + b" trailing garbage"
    if kind == 20:
        return b'{"\\uZZZZ": 1}'
    return json.dumps({"model": "smollm2", "prompt": [[1, -2, 3e400]], "logit_bias": {"x": "y"}}).encode()


def malformed(rng: random.Random) -> tuple[str, bytes]:
    """(method, raw request bytes)."""
    method = rng.choice(METHODS)
    path = rng.choice(PATHS)
    version = rng.choice(VERSIONS)
    body = bodies(rng) if rng.random() < 0.8 else b""
    headers = [("Host", "127.0.0.1"), ("Connection", "close")]
    if rng.random() < 0.2 and body:
        headers.append(("Content-Encoding", "gzip"))
        body = gzip.compress(body) if rng.random() < 0.5 else body
    for _ in range(rng.choice([0, 0, 0, 1, 2, 3])):
        headers.append(rng.choice(ODD_HEADERS))
    if rng.random() < 0.05:
        headers.extend((f"X-Many-{i}", "1") for i in range(rng.randrange(50, 200)))
    framing = rng.randrange(10)
    if framing == 0:
        headers.append(("Content-Length", str(max(0, len(body) - rng.randrange(1, 10)))))  # shorter: pipelined junk
    elif framing == 1:
        headers.append(("Content-Length", str(len(body) + rng.randrange(1, 10))))  # longer: body never completes
    elif framing == 2:
        headers.append(("Transfer-Encoding", "chunked"))
        body = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n" if rng.random() < 0.5 else b"zz\r\n" + body
    elif framing == 3:
        headers.extend([("Content-Length", str(len(body))), ("Transfer-Encoding", "chunked")])
    elif body or method.upper() == "POST":
        headers.append(("Content-Length", str(len(body))))
    line = f"{method} {path} {version}".encode("utf-8", "surrogateescape")
    head = b"\r\n".join([line, *(f"{k}: {v}".encode("utf-8", "surrogateescape") for k, v in headers)])
    sep = rng.choice([b"\r\n\r\n"] * 8 + [b"\n\n", b"\r\n"])
    return method, head + sep + body


async def answer_everything(proxy: StandInProxy, stop: asyncio.Event) -> None:
    """The replica side: every request that makes it through the edge gets a 200."""
    while not stop.is_set():
        for delivery in await proxy.queue.read(proxy.name, count=50, block_ms=100):
            if await proxy.queue.take(delivery.envelope.request_id, proxy.name) == "taken":
                await proxy.answer(delivery)
            else:
                await proxy.queue.finish(delivery.entry_id)


async def one(port: int, method: str, data: bytes) -> RawReply | str:
    reader, writer = await open_raw(port)
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        if method.upper() == "HEAD":
            head = await asyncio.wait_for(reader.read(65536), 15)
            return RawReply(int(head.split(b" ")[1]), "", {"server": "tiffin" if b"Server: tiffin" in head else ""})
        return await read_reply(reader, timeout_s=15)
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
        return "closed"  # cut without an answer (a request too broken to answer, or a refused connection)
    except TimeoutError:
        return "hung"
    finally:
        writer.close()


async def test_thousands_of_malformed_requests_never_get_a_500_and_the_edge_still_serves(redis: Redis) -> None:
    rng = random.Random(SEED)
    cases = [malformed(rng) for _ in range(REQUESTS)]
    settings = replace(EdgeSettings(), body_timeout_s=1.0, header_timeout_s=2.0)
    async with running_edge(redis, [deployment("smollm2", wait_timeout_s=5)], edge=settings) as edge:
        port = port_of(edge.url)
        stop = asyncio.Event()
        answerer = asyncio.create_task(answer_everything(StandInProxy(redis, "smollm2", "fuzz-proxy"), stop))
        statuses: Counter[int | str] = Counter()
        bad: list[tuple[bytes, object]] = []
        gate = asyncio.Semaphore(CONCURRENCY)

        async def run(method: str, data: bytes) -> None:
            async with gate:
                reply = await one(port, method, data)
            if isinstance(reply, str):
                statuses[reply] += 1
                return
            statuses[reply.status] += 1
            shaped = method.upper() == "HEAD" or reply.headers.get("content-type", "").startswith("application/json")
            if reply.status >= 500 or reply.headers.get("server") != "tiffin" or not shaped:
                bad.append((data[:120], reply))

        await asyncio.gather(*(run(method, data) for method, data in cases))
        print("fuzz statuses:", dict(sorted(statuses.items(), key=str)))

        # Still serving correctly.
        good = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}).encode()
        reply = await one(port, "POST", request("POST", "/v1/chat/completions", good, {"Connection": "close"}))
        stop.set()
        await answerer

    assert not bad, bad[:5]
    assert not any(isinstance(s, int) and s >= 500 for s in statuses)
    assert statuses["hung"] == 0
    assert sum(n for s, n in statuses.items() if isinstance(s, int)) > REQUESTS * 0.9  # almost all answered
    assert isinstance(reply, RawReply) and reply.status == 200 and reply.json() == {"ok": True}
