"""Streams to awkward clients: HTTP/1.0 and `Connection: close` streams end; a slow reader is cut and cancelled."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import replace

import aiohttp
import pytest
from redis.asyncio import Redis

from interceptor.config import EdgeSettings
from tests.interceptor.conftest import TIMEOUT_S, StandInProxy, deployment, eventually, running_edge
from tests.interceptor.rawhttp import closed_by_peer, open_raw, port_of, request
from tests.interceptor.test_edge_http import rejected
from tiffin.contracts.frames import Frame
from tiffin.contracts.queue import Delivery

CHAT = "/v1/chat/completions"
BODY = json.dumps({"model": "smollm2", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
SSE = {"content-type": "text/event-stream"}
EVENTS = [b'data: {"n": %d}\n\n' % i for i in range(3)] + [b"data: [DONE]\n\n"]


async def stream_events(proxy: StandInProxy, delivery: Delivery) -> None:
    envelope = delivery.envelope
    rid = envelope.request_id
    await proxy.queue.start(envelope, Frame.head(rid, proxy.name, 200, SSE))
    for event in EVENTS:
        await proxy.queue.send(envelope.reply_to, Frame.chunk(rid, proxy.name, event))
    await proxy.queue.send(envelope.reply_to, Frame.end(rid, proxy.name))
    await proxy.queue.finish(delivery.entry_id)


@pytest.mark.parametrize(
    ("version", "connection"), [("HTTP/1.0", "keep-alive"), ("HTTP/1.0", None), ("HTTP/1.1", "close")]
)
async def test_a_stream_to_a_client_that_cannot_take_chunks_or_asked_to_close_ends_with_the_connection(
    redis: Redis, version: str, connection: str | None
) -> None:
    async with running_edge(redis, [deployment("smollm2")]) as edge:
        proxy = StandInProxy(redis, "smollm2")
        reader, writer = await open_raw(port_of(edge.url))
        headers = {"Connection": connection} if connection else {}
        writer.write(request("POST", CHAT, BODY, headers, version=version))
        await stream_events(proxy, await proxy.take_one())

        received = await closed_by_peer(reader)  # TimeoutError here is the never-ending response
        writer.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"200"
    if version == "HTTP/1.0":
        assert b"transfer-encoding" not in head.lower()
        assert body == b"".join(EVENTS)
    else:
        assert all(event in body for event in EVENTS)


def slow_socket() -> socket.socket:
    """A client socket with a tiny receive buffer that will not read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    return sock


async def flood(proxy: StandInProxy, delivery: Delivery, chunks: int, chunk: bytes) -> str | None:
    """Stream `chunks` SSE chunks as fast as Redis takes them, stopping once the request is cancelled."""
    envelope = delivery.envelope
    rid = envelope.request_id
    await proxy.queue.start(envelope, Frame.head(rid, proxy.name, 200, SSE))
    for _ in range(chunks):
        state = await proxy.queue.state(rid)
        if state != "started":
            return state
        await proxy.queue.send(envelope.reply_to, Frame.chunk(rid, proxy.name, chunk))
    return await proxy.queue.state(rid)


@pytest.mark.parametrize(
    ("buffer_bytes", "write_timeout_s"), [(256 * 1024, 60.0), (64 * 1024 * 1024, 0.5)], ids=["buffer", "deadline"]
)
async def test_a_slow_stream_reader_is_cut_and_its_request_cancelled(
    redis: Redis, buffer_bytes: int, write_timeout_s: float
) -> None:
    settings = replace(EdgeSettings(), reply_buffer_bytes=buffer_bytes, write_timeout_s=write_timeout_s)
    async with running_edge(redis, [deployment("smollm2")], edge=settings) as edge:
        proxy = StandInProxy(redis, "smollm2")
        before = rejected("slow_reader", "smollm2")
        loop = asyncio.get_running_loop()
        sock = slow_socket()
        await loop.sock_connect(sock, ("127.0.0.1", port_of(edge.url)))
        await loop.sock_sendall(sock, request("POST", CHAT, BODY))
        delivery = await proxy.take_one()

        async with asyncio.timeout(60):
            state = await flood(proxy, delivery, chunks=2000, chunk=b"data: " + b"x" * 32_000 + b"\n\n")
        assert state == "cancelled"  # the replica learns to stop: its slot is freed

        # Other clients are served meanwhile and after.
        async with aiohttp.ClientSession() as http, http.get(edge.url + "/v1/models") as resp:
            assert resp.status == 200
        await eventually(lambda: _idle(edge.relay.in_flight), timeout_s=TIMEOUT_S)
        assert rejected("slow_reader", "smollm2") == before + 1
        sock.close()


async def _idle(in_flight: int) -> bool:
    return in_flight == 0
