"""The public listener against misbehaving clients over raw sockets: parser limits, deadlines, connection caps."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import replace

import aiohttp
import pytest
from redis.asyncio import Redis

from interceptor import metrics
from interceptor.config import EdgeSettings, parse_networks
from tests.interceptor.conftest import deployment, running_edge
from tests.interceptor.rawhttp import closed_by_peer, exchange, open_raw, port_of, read_reply, request

EDGE = EdgeSettings()


def rejected(reason: str, deployment: str = "-") -> float:
    value = metrics.REGISTRY.get_sample_value("tiffin_rejected_total", {"deployment": deployment, "reason": reason})
    return value or 0.0


def assert_openai_error(reply_status: int, body: dict[str, object], code: str) -> None:
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == code, body
    assert isinstance(error["message"], str) and error["message"]
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("data", "status", "code", "reason"),
    [
        (request(path="/v1/" + "a" * 5000), 414, "uri_too_long", "uri_too_long"),
        (request(headers={"X-Big": "b" * 9000}), 431, "headers_too_large", "headers_too_large"),
        (request(headers={f"X-H{i}": "1" for i in range(150)}), 431, "headers_too_large", "headers_too_large"),
        (b"this is not http\r\n\r\n", 400, "bad_request", "bad_request"),
        (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "bad_request",
         "bad_request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(200)), 400, "bad_request", "bad_request"),
    ],
    ids=["long-url", "long-header", "too-many-headers", "garbage", "duplicate-length", "tls-on-plain"],
)  # fmt: skip
async def test_parser_errors_are_openai_shaped_json_with_server_tiffin(
    redis: Redis, capsys: pytest.CaptureFixture[str], data: bytes, status: int, code: str, reason: str
) -> None:
    async with running_edge(redis, [deployment("smollm2")]) as edge:
        before = rejected(reason)
        reply = await exchange(port_of(edge.url), data)

        assert reply.status == status
        assert reply.headers["content-type"].startswith("application/json")
        assert reply.headers["server"] == "tiffin"
        assert len(reply.headers["x-request-id"]) == 32
        assert_openai_error(reply.status, reply.json(), code)
        assert rejected(reason) == before + 1
        # Still serving.
        assert (await exchange(port_of(edge.url), request())).status == 200
    logged = capsys.readouterr().out
    assert "Traceback" not in logged
    assert "bbbbbbbb" not in logged  # never a header value in the log


async def test_every_answer_says_server_tiffin_and_carries_its_own_request_id(redis: Redis) -> None:
    async with running_edge(redis, [deployment("smollm2")]) as edge, aiohttp.ClientSession() as http:
        seen = set()
        for method, path in [("GET", "/v1/models"), ("GET", "/nowhere"), ("GET", "/v1/chat/completions")]:
            async with http.request(method, edge.url + path, headers={"X-Request-Id": "client-chosen"}) as resp:
                assert resp.headers["Server"] == "tiffin"
                assert resp.headers["X-Request-Id"] != "client-chosen"
                seen.add(resp.headers["X-Request-Id"])
                assert resp.content_type == "application/json"
        assert len(seen) == 3


async def test_headers_sent_too_slowly_are_cut_with_408(redis: Redis) -> None:
    settings = replace(EDGE, header_timeout_s=0.5)
    async with running_edge(redis, [deployment("smollm2")], edge=settings) as edge:
        before = rejected("header_timeout")
        reader, writer = await open_raw(port_of(edge.url))
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        reply = await read_reply(reader)
        assert reply.status == 408
        assert reply.headers["server"] == "tiffin"
        assert reply.json()["error"]["code"] == "header_timeout"
        assert await closed_by_peer(reader) == b""
        writer.close()
        assert rejected("header_timeout") == before + 1


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer(redis: Redis) -> None:
    settings = replace(EDGE, header_timeout_s=0.5)
    async with running_edge(redis, [deployment("smollm2")], edge=settings) as edge:
        reader, writer = await open_raw(port_of(edge.url))
        assert await closed_by_peer(reader) == b""
        writer.close()


async def test_a_kept_alive_connection_gets_a_header_deadline_for_each_request(redis: Redis) -> None:
    settings = replace(EDGE, header_timeout_s=0.5, keepalive_timeout_s=60)
    async with running_edge(redis, [deployment("smollm2")], edge=settings) as edge:
        reader, writer = await open_raw(port_of(edge.url))
        writer.write(request())
        assert (await read_reply(reader)).status == 200
        writer.write(b"GET /v1/models HTTP/1.1\r\n")  # the next request begins, then stalls
        assert (await read_reply(reader)).status == 408
        writer.close()


async def test_idle_kept_alive_connections_are_closed(redis: Redis) -> None:
    settings = replace(EDGE, keepalive_timeout_s=0.5)
    async with running_edge(redis, [deployment("smollm2")], edge=settings) as edge:
        reader, writer = await open_raw(port_of(edge.url))
        writer.write(request())
        reply = await read_reply(reader)
        assert reply.status == 200
        assert "close" not in reply.headers.get("connection", "")
        assert await closed_by_peer(reader) == b""
        writer.close()


async def test_a_body_sent_too_slowly_gets_408_and_the_connection_closes(redis: Redis) -> None:
    settings = replace(EDGE, body_timeout_s=0.5)
    async with running_edge(redis, [deployment("smollm2")], edge=settings) as edge:
        before = rejected("body_timeout", "-")
        reader, writer = await open_raw(port_of(edge.url))
        head = request("POST", "/v1/chat/completions", headers={"Content-Length": "1000"})
        writer.write(head + b'{"model": "smol')
        reply = await read_reply(reader)
        assert reply.status == 408
        assert reply.json()["error"]["code"] == "body_timeout"
        assert reply.headers["connection"] == "close"
        assert await closed_by_peer(reader) == b""
        writer.close()
        assert rejected("body_timeout", "-") == before + 1


async def test_connections_past_the_per_client_cap_are_closed_at_once(redis: Redis) -> None:
    settings = replace(EDGE, max_connections_per_client=3, header_timeout_s=30)
    async with running_edge(redis, [deployment("smollm2")], edge=settings) as edge:
        port = port_of(edge.url)
        before = rejected("client_connections")
        held = [await open_raw(port) for _ in range(3)]
        reader, writer = await open_raw(port)
        assert await closed_by_peer(reader) == b""  # refused: closed without a word
        writer.close()
        assert rejected("client_connections") == before + 1
        # The connections it holds are still served, and a freed slot is usable again.
        held_reader, held_writer = held[0]
        held_writer.write(request())
        assert (await read_reply(held_reader)).status == 200
        held[1][1].close()
        await held[1][1].wait_closed()
        for _ in range(200):  # the server notices the close on its next loop turn
            reply = None
            try:
                reply = await exchange(port, request(headers={"Connection": "close"}), timeout_s=2)
            except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                await asyncio.sleep(0.02)
                continue
            break
        assert reply is not None and reply.status == 200
        for _, w in held:
            w.close()


async def test_the_total_connection_cap_holds_for_everyone(redis: Redis) -> None:
    settings = replace(EDGE, max_connections=2, header_timeout_s=30)
    async with running_edge(redis, [deployment("smollm2")], edge=settings) as edge:
        port = port_of(edge.url)
        before = rejected("connections")
        held = [await open_raw(port) for _ in range(2)]
        reader, writer = await open_raw(port)
        assert await closed_by_peer(reader) == b""
        writer.close()
        assert rejected("connections") == before + 1
        for _, w in held:
            w.close()


async def test_trusted_proxies_are_exempt_from_the_per_client_cap(redis: Redis) -> None:
    settings = replace(
        EDGE, max_connections_per_client=2, header_timeout_s=30, trusted_proxies=parse_networks("test", "127.0.0.1")
    )
    async with running_edge(redis, [deployment("smollm2")], edge=settings) as edge:
        port = port_of(edge.url)
        held = [await open_raw(port) for _ in range(5)]
        for reader, writer in held:
            writer.write(request())
            assert (await read_reply(reader)).status == 200
            writer.close()


async def test_refused_connections_are_logged_in_aggregate(redis: Redis, capsys: pytest.CaptureFixture[str]) -> None:
    settings = replace(EDGE, max_connections_per_client=1, header_timeout_s=30)
    async with running_edge(redis, [deployment("smollm2")], edge=settings) as edge:
        port = port_of(edge.url)
        _held_reader, held_writer = await open_raw(port)
        for _ in range(50):
            reader, writer = await open_raw(port)
            await closed_by_peer(reader)
            writer.close()
        held_writer.close()
    lines = [line for line in capsys.readouterr().out.splitlines() if "connections_refused" in line]
    assert 1 <= len(lines) <= 2  # the first at once, the rest summed per interval


async def test_a_client_that_pipelines_requests_and_never_reads_the_answers_is_cut(redis: Redis) -> None:
    settings = replace(EDGE, write_timeout_s=0.5)
    async with running_edge(redis, [deployment("smollm2")], edge=settings) as edge:
        before = rejected("slow_reader")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port_of(edge.url)))
            burst = request(path="/v1/models" + "?pad=" + "x" * 2000) * 200
            async with asyncio.timeout(60):
                with contextlib.suppress(ConnectionError):
                    while True:  # until the edge cuts it (our own send buffer fills first, then its)
                        await loop.sock_sendall(sock, burst)
        finally:
            sock.close()
        assert rejected("slow_reader") >= before + 1


async def test_a_bug_at_the_edge_is_an_openai_500_without_detail_logged_once(
    redis: Redis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(request: object) -> None:
        raise RuntimeError("internal detail: /srv/tiffin/secret.py redis://10.0.0.5:6379")

    async with running_edge(redis, [deployment("smollm2")]) as edge:
        monkeypatch.setattr(edge.relay, "completion", broken)
        reply = await exchange(port_of(edge.url), request("POST", "/v1/chat/completions", b"{}"))

    assert reply.status == 500
    assert reply.headers["server"] == "tiffin"
    assert reply.json()["error"]["code"] == "internal_error"
    assert b"secret" not in reply.body and b"10.0.0.5" not in reply.body
    logged = [line for line in capsys.readouterr().out.splitlines() if "unhandled_error" in line]
    assert len(logged) == 1 and reply.headers["x-request-id"] in logged[0]


async def test_headers_past_their_total_size_get_431_before_they_end(redis: Redis) -> None:
    settings = replace(EDGE, max_header_total_bytes=4096)
    async with running_edge(redis, [deployment("smollm2")], edge=settings) as edge:
        before = rejected("headers_too_large")
        reader, writer = await open_raw(port_of(edge.url))
        writer.write(
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 500) for i in range(20))
        )
        reply = await read_reply(reader)  # no blank line yet: the headers never ended
        assert reply.status == 431
        assert reply.json()["error"]["code"] == "headers_too_large"
        assert await closed_by_peer(reader) == b""
        writer.close()
        assert rejected("headers_too_large") == before + 1
