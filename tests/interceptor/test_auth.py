"""API keys at the edge: who gets 401 or 404, that nothing refused reaches the queue, per-key 429s, fresh keys."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from interceptor import metrics
from interceptor.auth import KeyGate
from tests.interceptor.conftest import TIMEOUT_S, Edge, StandInProxy, eventually, running_edge
from tiffin.common.redis_conn import connect
from tiffin.contracts import keys
from tiffin.contracts.apikeys import KeyLimitsOverride, create_key, revoke_key
from tiffin.contracts.config import Deployment
from tiffin.contracts.frames import Frame
from tiffin.local.ports import free_port

CHAT = "/v1/chat/completions"


def dep(name: str, prefix: str = "/", require_api_key: bool = True, **per_key: Any) -> Deployment:
    auth: dict[str, Any] = {"require_api_key": require_api_key}
    if per_key:
        auth["per_key"] = per_key
    return Deployment.model_validate(
        {"name": name, "model": "smollm2", "routing": {"path_prefix": prefix}, "auth": auth}
    )


# Two keyed deployments and an open one share the root route (the model decides); "s" has a route of its own.
DEPLOYMENTS = [dep("a"), dep("b"), dep("o", require_api_key=False), dep("s", prefix="/s")]


def rejected(deployment: str, reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("tiffin_rejected_total", {"deployment": deployment, "reason": reason}) or 0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def chat(model: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if model is not None:
        body["model"] = model
    return body


@pytest.fixture
async def edge(redis: Redis) -> AsyncIterator[Edge]:
    async with running_edge(redis, DEPLOYMENTS) as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as client:
        yield client


async def polled_twice(gate: KeyGate) -> None:
    """Two polls from now: any change made before this call has been seen (no clock involved)."""
    target = gate.polls + 2
    await eventually(lambda: _at_least(gate, target))


async def _at_least(gate: KeyGate, polls: int) -> bool:
    return gate.polls >= polls


async def nothing_queued(redis: Redis) -> None:
    for d in DEPLOYMENTS:
        assert await redis.xlen(keys.queue(d.name)) == 0, d.name
    assert await StandInProxy(redis, "a").queue.read("p", count=10, block_ms=50) == []


async def served(
    session: aiohttp.ClientSession, edge: Edge, proxy: StandInProxy, path: str, body: Any, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    """A request a stand-in proxy answers: (status, envelope headers the replica would have seen)."""
    posted = asyncio.create_task(session.post(edge.url + path, json=body, headers=headers))
    delivery = await proxy.take_one()
    await proxy.answer(delivery)
    async with await posted as resp:
        await resp.read()
        return resp.status, delivery.envelope.headers


async def test_requests_without_a_valid_key_get_401_and_reach_no_queue(
    redis: Redis, edge: Edge, session: aiohttp.ClientSession
) -> None:
    _, token = await create_key(redis, ["a"])
    revoked, revoked_token = await create_key(redis, ["a"])
    await revoke_key(redis, revoked.id)
    await polled_twice(edge.relay.gate)
    key_id, _, _secret = token.removeprefix("tfn_").partition("_")
    before = rejected("a", "unauthenticated") + rejected("-", "unauthenticated")

    cases = {
        "no header": {},
        "empty": {"Authorization": ""},
        "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
        "bearer alone": {"Authorization": "Bearer"},
        "no scheme": {"Authorization": token},
        "wrong secret": bearer(f"tfn_{key_id}_{'A' * 43}"),
        "unknown": bearer("sk-proj-0123456789"),
        "revoked": bearer(revoked_token),
    }
    for case, headers in cases.items():
        for path, model in ((CHAT, "a"), ("/s" + CHAT, None)):
            async with session.post(edge.url + path, json=chat(model), headers=headers) as resp:
                assert resp.status == 401, (case, path)
                assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="tiffin"')
                assert resp.headers["X-Request-Id"]
                error = (await resp.json())["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key"), case
            assert token not in error["message"] and revoked_token not in error["message"]

    await nothing_queued(redis)
    assert rejected("a", "unauthenticated") + rejected("-", "unauthenticated") == before + 2 * len(cases)


async def test_a_key_for_another_deployment_gets_the_404_of_a_model_that_does_not_exist(
    redis: Redis, edge: Edge, session: aiohttp.ClientSession
) -> None:
    _, token = await create_key(redis, ["a"])
    await polled_twice(edge.relay.gate)
    before = rejected("b", "forbidden")

    async with session.post(edge.url + CHAT, json=chat("b"), headers=bearer(token)) as resp:
        assert resp.status == 404
        forbidden = (await resp.json())["error"]
    async with session.post(edge.url + CHAT, json=chat("nope"), headers=bearer(token)) as resp:
        assert resp.status == 404
        missing = (await resp.json())["error"]
    # Its own route's answer is the one for a route that does not exist: nothing tells that "s" is there.
    async with session.post(edge.url + "/s" + CHAT, json=chat(None), headers=bearer(token)) as resp:
        assert resp.status == 404
        other_route = (await resp.json())["error"]
    async with session.post(edge.url + "/zz" + CHAT, json=chat(None), headers=bearer(token)) as resp:
        no_route = (await resp.json())["error"]

    assert forbidden["code"] == missing["code"] == "model_not_found"
    assert forbidden["message"].replace("'b'", "'nope'") == missing["message"]
    assert "available: a, o" in forbidden["message"]  # only what this key may use
    assert other_route["message"].replace("/s/", "/zz/") == no_route["message"]
    assert other_route["code"] == no_route["code"] == "route_not_found"
    assert rejected("b", "forbidden") == before + 1
    await nothing_queued(redis)


async def test_a_strict_route_refuses_before_the_body_is_sent(edge: Edge) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", int(edge.url.rsplit(":", 1)[1]))
    try:
        # Headers announce a body that never comes: the answer must not wait for it.
        writer.write(b"POST /s/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000\r\n\r\n")  # fmt: skip
        await writer.drain()
        async with asyncio.timeout(TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 401 ")


async def test_a_valid_key_is_served_and_its_header_never_reaches_the_replica(
    redis: Redis, edge: Edge, session: aiohttp.ClientSession
) -> None:
    _, token = await create_key(redis, ["a", "s"])
    await polled_twice(edge.relay.gate)

    status, seen = await served(session, edge, StandInProxy(redis, "a"), CHAT, chat("a"), bearer(token))
    assert status == 200
    assert "authorization" not in {h.lower() for h in seen}
    assert token not in str(seen)
    status, _ = await served(session, edge, StandInProxy(redis, "s"), "/s" + CHAT, chat(None), bearer(token))
    assert status == 200


async def test_open_deployments_ignore_the_header_and_keyed_ones_on_the_same_route_still_need_it(
    redis: Redis, edge: Edge, session: aiohttp.ClientSession
) -> None:
    # OpenAI clients always send some key; an open deployment must not care which.
    for headers in ({}, bearer("unused"), {"Authorization": "garbage"}):
        status, _ = await served(session, edge, StandInProxy(redis, "o"), CHAT, chat("o"), headers)
        assert status == 200
    async with session.post(edge.url + CHAT, json=chat("a"), headers=bearer("unused")) as resp:
        assert resp.status == 401
    await nothing_queued(redis)


async def test_models_lists_what_the_key_opens(redis: Redis, edge: Edge, session: aiohttp.ClientSession) -> None:
    _, token_a = await create_key(redis, ["a"])
    _, token_ab = await create_key(redis, ["a", "b"])
    await polled_twice(edge.relay.gate)

    async def models(path: str, headers: dict[str, str]) -> tuple[int, list[str]]:
        async with session.get(edge.url + path, headers=headers) as resp:
            body = await resp.json()
            return resp.status, sorted(m["id"] for m in body.get("data", []))

    assert await models("/v1/models", bearer(token_a)) == (200, ["a", "o"])
    assert await models("/v1/models", bearer(token_ab)) == (200, ["a", "b", "o"])
    assert (await models("/v1/models", {}))[0] == 401  # a key is needed unless every candidate is open
    assert (await models("/s/v1/models", {}))[0] == 401
    # A route the key opens nothing on answers as a route that does not exist.
    assert await models("/s/v1/models", bearer(token_a)) == (404, [])
    assert await models("/zz/v1/models", bearer(token_a)) == (404, [])


async def test_models_of_an_open_route_need_no_key(redis: Redis, session: aiohttp.ClientSession) -> None:
    async with (
        running_edge(redis, [dep("o", require_api_key=False)]) as edge,
        session.get(edge.url + "/v1/models") as resp,
    ):
        assert resp.status == 200
        assert [m["id"] for m in (await resp.json())["data"]] == ["o"]


async def test_keys_made_or_revoked_later_are_honoured_by_every_interceptor(
    redis: Redis, session: aiohttp.ClientSession
) -> None:
    async with running_edge(redis, DEPLOYMENTS, "edge-1") as one, running_edge(redis, DEPLOYMENTS, "edge-2") as two:
        key, token = await create_key(redis, ["a"])
        proxy = StandInProxy(redis, "a")
        for edge in (one, two):
            await polled_twice(edge.relay.gate)
            status, _ = await served(session, edge, proxy, CHAT, chat("a"), bearer(token))
            assert status == 200

        await revoke_key(redis, key.id)
        for edge in (one, two):
            await polled_twice(edge.relay.gate)
            async with session.post(edge.url + CHAT, json=chat("a"), headers=bearer(token)) as resp:
                assert resp.status == 401
        await nothing_queued(redis)


async def test_with_redis_unreachable_the_gate_keeps_the_last_known_keys(redis: Redis) -> None:
    _, token = await create_key(redis, ["a"])
    gate = KeyGate(redis)
    await gate.load()
    gate.redis = connect(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        await gate.refresh()
        await gate.refresh()
    finally:
        await gate.redis.aclose()
    assert gate.identify(f"Bearer {token}").key is not None
    assert gate.polls == 2


# --- per-key limits ----------------------------------------------------------------------------------


async def test_over_the_rate_a_key_gets_429_with_retry_after_and_after_the_window_it_is_served(
    redis: Redis, session: aiohttp.ClientSession
) -> None:
    async with running_edge(redis, [dep("r", requests_per_second=1, burst=1, concurrency=None)]) as edge:
        _, token = await create_key(redis, ["r"])
        await polled_twice(edge.relay.gate)
        proxy = StandInProxy(redis, "r")
        before = rejected("r", "key_rate")

        assert (await served(session, edge, proxy, CHAT, chat("r"), bearer(token)))[0] == 200
        async with session.post(edge.url + CHAT, json=chat("r"), headers=bearer(token)) as resp:
            assert resp.status == 429
            retry_after = int(resp.headers["Retry-After"])
            error = (await resp.json())["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert retry_after == 1
        assert rejected("r", "key_rate") == before + 1
        assert await redis.xlen(keys.queue("r")) == 0

        await asyncio.sleep(retry_after)  # the window itself: what this test is about
        assert (await served(session, edge, proxy, CHAT, chat("r"), bearer(token)))[0] == 200


async def test_a_keys_own_limits_override_the_deployments(redis: Redis, session: aiohttp.ClientSession) -> None:
    async with running_edge(redis, [dep("r", requests_per_second=1, burst=1, concurrency=None)]) as edge:
        _, token = await create_key(redis, ["r"], limits=KeyLimitsOverride(requests_per_second=0))
        await polled_twice(edge.relay.gate)
        proxy = StandInProxy(redis, "r")
        for _ in range(3):
            assert (await served(session, edge, proxy, CHAT, chat("r"), bearer(token)))[0] == 200


async def test_concurrent_requests_over_the_limit_get_429_and_slots_free_however_requests_end(
    redis: Redis, session: aiohttp.ClientSession
) -> None:
    async with running_edge(redis, [dep("c", requests_per_second=None, concurrency=1)]) as edge:
        key, token = await create_key(redis, ["c"])
        await polled_twice(edge.relay.gate)
        proxy = StandInProxy(redis, "c")
        slots = keys.key_slots(key.id, "c")
        before = rejected("c", "key_concurrency")

        async def no_slot_held() -> bool:
            return await redis.zcard(slots) == 0

        # One in progress: a second is refused without queueing.
        first = asyncio.create_task(session.post(edge.url + CHAT, json=chat("c"), headers=bearer(token)))
        held = await proxy.take_one()
        async with session.post(edge.url + CHAT, json=chat("c"), headers=bearer(token)) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "1"
            assert (await resp.json())["error"]["code"] == "concurrency_limit_exceeded"
        assert rejected("c", "key_concurrency") == before + 1
        assert await redis.xlen(keys.queue("c")) == 1  # only the first

        # Ends in an error from the replica: the slot is free.
        await proxy.fail(held, 502, "upstream_failed")
        async with await first as resp:
            assert resp.status == 502
        await eventually(no_slot_held)

        # The client goes away while waiting in the queue: the slot is free.
        gone = asyncio.create_task(session.post(edge.url + CHAT, json=chat("c"), headers=bearer(token)))
        await eventually(lambda: _queued(redis, "c"))
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
        await eventually(no_slot_held)

        # And a normal answer frees it too.
        assert (await served(session, edge, proxy, CHAT, chat("c"), bearer(token)))[0] == 200
        await eventually(no_slot_held)
        assert (await served(session, edge, proxy, CHAT, chat("c"), bearer(token)))[0] == 200


async def _queued(redis: Redis, name: str) -> bool:
    return bool(await redis.xlen(keys.queue(name)))


async def test_a_client_that_hangs_up_mid_stream_frees_its_slot(redis: Redis, session: aiohttp.ClientSession) -> None:
    async with running_edge(redis, [dep("c", requests_per_second=None, concurrency=1)]) as edge:
        key, token = await create_key(redis, ["c"])
        await polled_twice(edge.relay.gate)
        proxy = StandInProxy(redis, "c")
        slots = keys.key_slots(key.id, "c")

        posted = asyncio.create_task(session.post(edge.url + CHAT, json=chat("c"), headers=bearer(token)))
        delivery = await proxy.take_one()
        envelope = delivery.envelope
        head = Frame.head(envelope.request_id, proxy.name, 200, {"content-type": "text/event-stream"})
        await proxy.queue.start(envelope, head)
        await proxy.queue.send(envelope.reply_to, Frame.chunk(envelope.request_id, proxy.name, b"data: {}\n\n"))
        resp = await posted
        assert await resp.content.readuntil(b"\n\n") == b"data: {}\n\n"
        assert await redis.zcard(slots) == 1  # streaming: still held
        resp.close()  # the client goes away mid-stream

        async def released() -> bool:
            return await redis.zcard(slots) == 0

        await eventually(released)
        await proxy.queue.finish(delivery.entry_id)
        assert (await served(session, edge, proxy, CHAT, chat("c"), bearer(token)))[0] == 200
