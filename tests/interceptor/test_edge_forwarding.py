"""Sanitising at the edge: hop-by-hop headers, X-Forwarded-* from untrusted and trusted peers, request ids."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from interceptor.config import EdgeSettings, parse_networks
from interceptor.forwarding import forwarding
from tests.interceptor.conftest import StandInProxy, deployment, running_edge
from tests.interceptor.rawhttp import exchange, port_of, request
from tiffin.contracts.frames import Frame

CHAT = "/v1/chat/completions"
BODY = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}).encode()
HOP_BY_HOP = {
    "Connection": "keep-alive, X-Private",
    "Keep-Alive": "timeout=5",
    "Proxy-Authorization": "Basic c2VjcmV0",
    "TE": "trailers",
    "Upgrade": "websocket",
    "X-Private": "drop me",
    "Trailer": "X-Later",
}
SPOOFED = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
TRUSTED = parse_networks("test", "127.0.0.0/8")


async def relay_one(redis: Redis, url: str, headers: dict[str, str]) -> tuple[dict[str, str], dict[str, str], str]:
    """Send a chat request with `headers`; returns (headers the replica got, headers the client got, its id)."""
    proxy = StandInProxy(redis, "smollm2")
    sent = asyncio.create_task(exchange(port_of(url), request("POST", CHAT, BODY, {"Connection": "close", **headers})))
    delivery = await proxy.take_one()
    envelope = delivery.envelope
    reply_headers = {
        "content-type": "application/json", "connection": "keep-alive", "keep-alive": "timeout=99",
        "proxy-authenticate": "Basic", "upgrade": "h2c", "x-internal-runner": "10.0.0.7:8001",
    }  # fmt: skip
    await proxy.queue.start(envelope, Frame.head(envelope.request_id, proxy.name, 200, reply_headers))
    await proxy.queue.send(envelope.reply_to, Frame.chunk(envelope.request_id, proxy.name, b'{"ok": true}'))
    await proxy.queue.send(envelope.reply_to, Frame.end(envelope.request_id, proxy.name))
    await proxy.queue.finish(delivery.entry_id)
    reply = await sent
    assert reply.status == 200
    return envelope.headers, reply.headers, envelope.request_id


async def test_hop_by_hop_headers_are_neither_forwarded_nor_relayed(redis: Redis) -> None:
    async with running_edge(redis, [deployment("smollm2")]) as edge:
        forwarded, relayed, _ = await relay_one(redis, edge.url, HOP_BY_HOP)

    assert not {k.lower() for k in HOP_BY_HOP} & set(forwarded)
    assert "keep-alive" not in relayed and "proxy-authenticate" not in relayed and "upgrade" not in relayed
    assert "x-internal-runner" not in relayed
    assert relayed.get("connection", "") in ("", "close")  # this edge decides, never the replica


async def test_spoofed_forwarding_headers_from_an_untrusted_peer_are_replaced(redis: Redis) -> None:
    async with running_edge(redis, [deployment("smollm2")]) as edge:
        forwarded, _, _ = await relay_one(redis, edge.url, SPOOFED)

    assert forwarded["x-forwarded-for"] == "127.0.0.1"
    assert forwarded["x-forwarded-proto"] == "http"
    assert forwarded["x-forwarded-host"] == "127.0.0.1"


async def test_forwarding_headers_from_a_trusted_proxy_are_kept_and_extended(redis: Redis) -> None:
    settings = replace(EdgeSettings(), trusted_proxies=TRUSTED)
    async with running_edge(redis, [deployment("smollm2")], edge=settings) as edge:
        forwarded, _, _ = await relay_one(redis, edge.url, SPOOFED)

    assert forwarded["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert forwarded["x-forwarded-proto"] == "https"
    assert forwarded["x-forwarded-host"] == "evil.example"


async def test_the_request_id_is_the_edges_and_the_replica_and_client_see_the_same_one(redis: Redis) -> None:
    async with running_edge(redis, [deployment("smollm2")]) as edge:
        forwarded, relayed, rid = await relay_one(redis, edge.url, {"X-Request-Id": "mine"})

    assert forwarded["x-request-id"] == rid == relayed["x-request-id"]
    assert rid != "mine" and len(rid) == 32


def test_the_client_is_the_first_untrusted_hop_behind_trusted_proxies() -> None:
    chain = {"x-forwarded-for": "198.51.100.1, 203.0.113.9, 10.0.0.2"}
    trusted = parse_networks("test", "10.0.0.0/8, 127.0.0.1")

    assert forwarding("127.0.0.1", "http", "h", chain, trusted).client == "203.0.113.9"
    assert forwarding("192.0.2.5", "http", "h", chain, trusted).client == "192.0.2.5"
    assert forwarding("::ffff:127.0.0.1", "http", "h", {}, trusted).client == "::ffff:127.0.0.1"
    only_proxies = {"x-forwarded-for": "10.0.0.3"}
    assert forwarding("127.0.0.1", "http", "h", only_proxies, trusted).client == "10.0.0.3"


async def test_request_log_lines_name_the_client_and_never_a_header_value(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_edge(redis, [deployment("smollm2")]) as edge:
        await relay_one(redis, edge.url, {"Authorization": "Bearer sk-very-secret-key"})
        await exchange(port_of(edge.url), request(headers={"Authorization": "Bearer\x01malformed-secret"}))
    out = capsys.readouterr().out
    assert any("request " in line and "client=127.0.0.1" in line for line in out.splitlines())
    assert "very-secret" not in out and "malformed-secret" not in out
