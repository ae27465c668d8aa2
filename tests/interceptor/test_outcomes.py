"""Every request's end is what the log line and `tiffin_requests_total` say: a Redis fault is a 503 (never a 500
or status 0), a client that leaves is 499 wherever it leaves, and a stream broken after its head keeps the status
it began with, marked `stream_broken` and counted in `tiffin_streams_broken_total`.

The Redis faults use a redis-server of the test's own (paused with SIGSTOP, or stopped), never the shared one.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from interceptor import metrics
from interceptor.config import EdgeSettings
from interceptor.respond import sse_error_code
from tests.interceptor.conftest import TIMEOUT_S, StandInProxy, deployment, eventually, running_edge
from tests.interceptor.rawhttp import open_raw, port_of
from tiffin.common.redis_conn import connect_bounded
from tiffin.contracts import keys
from tiffin.contracts.errors import sse_error_event
from tiffin.contracts.frames import Frame
from tiffin.local.redis_server import EmbeddedRedis

CHAT = "/v1/chat/completions"
REDIS_TIMEOUT_S = 1.0


def chat(content: str, stream: bool = False) -> dict[str, Any]:
    return {"model": "smollm2", "stream": stream, "messages": [{"role": "user", "content": content}]}


def requests_counted(status: int, deployment: str = "smollm2") -> float:
    sample = {"deployment": deployment, "status": str(status)}
    return metrics.REGISTRY.get_sample_value("tiffin_requests_total", sample) or 0.0


def broken_counted(error: str, deployment: str = "smollm2") -> float:
    sample = {"deployment": deployment, "error": error}
    return metrics.REGISTRY.get_sample_value("tiffin_streams_broken_total", sample) or 0.0


def rejected(reason: str, deployment: str = "smollm2") -> float:
    sample = {"deployment": deployment, "reason": reason}
    return metrics.REGISTRY.get_sample_value("tiffin_rejected_total", sample) or 0.0


def request_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in logs if line.get("event") == "request"]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server this test may pause or stop; resumed and stopped at the end whatever happened."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture
async def bounded(own_redis: EmbeddedRedis) -> AsyncIterator[Redis]:
    """The interceptor's kind of client (bounded pool and waits) on the test's own Redis."""
    client = connect_bounded(own_redis.url, max_connections=8, timeout_s=REDIS_TIMEOUT_S)
    yield client
    await client.aclose()


@pytest.mark.parametrize("fault", ["paused", "stopped"])
async def test_a_paused_or_stopped_redis_answers_503_with_retry_after_and_an_openai_body(
    own_redis: EmbeddedRedis, bounded: Redis, fault: str
) -> None:
    settings = EdgeSettings(redis_timeout_s=REDIS_TIMEOUT_S)
    before, refused = requests_counted(503), rejected("backend_unavailable")
    async with running_edge(bounded, [deployment("smollm2")], edge=settings) as edge:
        assert own_redis.process is not None
        if fault == "paused":
            os.kill(own_redis.process.pid, signal.SIGSTOP)
        else:
            own_redis.stop()
        with capture_logs() as logs:
            async with aiohttp.ClientSession() as session:
                async with asyncio.timeout(TIMEOUT_S * 2):  # bounded: a dead Redis never stalls the answer
                    async with session.post(edge.url + CHAT, json=chat("hi")) as resp:
                        body = await resp.json()
                        assert resp.status == 503, body
                        assert int(resp.headers["Retry-After"]) >= 1
                        assert resp.headers["Content-Type"].startswith("application/json")
                        rid = resp.headers["X-Request-Id"]
        assert body["error"]["code"] == "backend_unavailable"
        assert body["error"]["type"] == "server_error"
        assert "redis" not in body["error"]["message"].lower()  # no internals in the answer
        [line] = [line for line in request_lines(logs) if line["request_id"] == rid]
        assert line["status"] == 503 and line["detail"] == "backend_unavailable"
        assert requests_counted(503) == before + 1
        assert rejected("backend_unavailable") == refused + 1
        assert [line["event"] for line in logs].count("backend_unavailable") == 1  # the outage's cause, once

        if fault == "paused":
            # The enqueue sent before the pause runs when Redis resumes; the request is withdrawn then, so no
            # replica ever serves an answer nobody waits for.
            os.kill(own_redis.process.pid, signal.SIGCONT)

            async def withdrawn() -> bool:
                state = await bounded.hget(keys.request(rid), "state")
                return state in (None, b"cancelled") and await bounded.xlen(keys.queue("smollm2")) == 0

            await eventually(withdrawn, TIMEOUT_S * 2)
            await eventually(lambda: _no_pending(edge.relay.withdrawals), TIMEOUT_S * 2)

            # And the next request is served as usual.
            proxy = StandInProxy(bounded, "smollm2")
            async with aiohttp.ClientSession() as session:
                posting = asyncio.create_task(session.post(edge.url + CHAT, json=chat("again")))
                await proxy.answer(await proxy.take_one())
                async with await posting as resp:
                    assert resp.status == 200


async def _no_pending(withdrawals: Any) -> bool:
    return len(withdrawals) == 0


async def test_a_client_leaving_during_its_body_is_logged_and_counted_as_499(redis: Redis) -> None:
    before = requests_counted(499, deployment="-")
    with capture_logs() as logs:
        async with running_edge(redis, [deployment("smollm2")]) as edge:
            _reader, writer = await open_raw(port_of(edge.url))
            writer.write(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         "Content-Length: 1000\r\n\r\n{\"model\":".encode())  # fmt: skip
            await writer.drain()
            await eventually(lambda: _in_flight(edge.relay, 1))
            writer.close()  # leaves before the body is complete
            await eventually(lambda: _counted(lambda: requests_counted(499, deployment="-"), before + 1))
    [line] = request_lines(logs)
    assert line["status"] == 499 and line["detail"] == "client_closed"


async def test_a_client_leaving_while_its_request_waits_is_499_and_the_request_is_withdrawn(redis: Redis) -> None:
    before = requests_counted(499)
    with capture_logs() as logs:
        async with running_edge(redis, [deployment("smollm2")]) as edge:
            async with aiohttp.ClientSession() as session:
                posting = asyncio.create_task(session.post(edge.url + CHAT, json=chat("waiting")))
                await eventually(lambda: _queued(redis, 1))
                posting.cancel()  # the client gives up while nothing has taken the request
                with pytest.raises(asyncio.CancelledError):
                    await posting
            await eventually(lambda: _counted(lambda: requests_counted(499), before + 1))
            await eventually(lambda: _queued(redis, 0))
    [line] = request_lines(logs)
    assert line["status"] == 499 and line["detail"] == "client_closed" and line["deployment"] == "smollm2"


@pytest.mark.parametrize("stream", [True, False])
async def test_a_stream_broken_after_its_head_is_logged_with_its_status_and_counted_as_broken(
    redis: Redis, stream: bool
) -> None:
    before_200, before_broken = requests_counted(200), broken_counted("upstream_failed")
    content_type = "text/event-stream" if stream else "application/json"
    with capture_logs() as logs:
        async with running_edge(redis, [deployment("smollm2")]) as edge:
            proxy = StandInProxy(redis, "smollm2")
            async with aiohttp.ClientSession() as session:
                posting = asyncio.create_task(session.post(edge.url + CHAT, json=chat("break", stream=stream)))
                delivery = await proxy.take_one()
                envelope, rid = delivery.envelope, delivery.envelope.request_id
                await proxy.queue.start(envelope, Frame.head(rid, proxy.name, 200, {"content-type": content_type}))
                await proxy.queue.send(envelope.reply_to, Frame.chunk(rid, proxy.name, b'data: {"n": 0}\n\n'))
                failure = Frame.fail(rid, proxy.name, 502, "the runner died", "upstream_failed")
                await proxy.queue.send(envelope.reply_to, failure)
                await proxy.queue.finish(delivery.entry_id)
                async with await posting as resp:
                    assert resp.status == 200
                    if stream:
                        body = await resp.read()
                        last = json.loads(body.decode().strip().split("\n\n")[-1].removeprefix("data: "))
                        assert last["error"]["code"] == "upstream_failed"
                    else:
                        with pytest.raises(aiohttp.ClientPayloadError):
                            await resp.read()  # cut short: incomplete, never a clean success
            await eventually(lambda: _counted(lambda: broken_counted("upstream_failed"), before_broken + 1))
    [line] = request_lines(logs)
    assert line["status"] == 200 and line["detail"] == "stream_broken" and line["error"] == "upstream_failed"
    assert requests_counted(200) == before_200 + 1


async def _in_flight(relay: Any, count: int) -> bool:
    return bool(relay.in_flight == count)


async def _queued(redis: Redis, count: int) -> bool:
    return bool(await redis.xlen(keys.queue("smollm2")) == count)


async def _counted(value: Any, at_least: float) -> bool:
    return bool(value() >= at_least)


async def test_an_error_event_written_upstream_marks_the_stream_broken(redis: Redis) -> None:
    """A runner dying mid-stream makes the API server write an error event and end cleanly: still broken."""
    before = broken_counted("upstream_failed")
    event = sse_error_event("the runner failed mid-stream: broken", "upstream_failed")
    with capture_logs() as logs:
        async with running_edge(redis, [deployment("smollm2")]) as edge:
            proxy = StandInProxy(redis, "smollm2")
            async with aiohttp.ClientSession() as session:
                posting = asyncio.create_task(session.post(edge.url + CHAT, json=chat("died", stream=True)))
                delivery = await proxy.take_one()
                envelope, rid = delivery.envelope, delivery.envelope.request_id
                await proxy.queue.start(
                    envelope, Frame.head(rid, proxy.name, 200, {"content-type": "text/event-stream"})
                )
                for data in (b'data: {"n": 0}\n\n', event):
                    await proxy.queue.send(envelope.reply_to, Frame.chunk(rid, proxy.name, data))
                await proxy.queue.send(envelope.reply_to, Frame.end(rid, proxy.name))
                await proxy.queue.finish(delivery.entry_id)
                async with await posting as resp:
                    assert resp.status == 200
                    assert (await resp.read()).endswith(event)
            await eventually(lambda: _counted(lambda: broken_counted("upstream_failed"), before + 1))
    [line] = request_lines(logs)
    assert line["status"] == 200 and line["detail"] == "stream_broken" and line["error"] == "upstream_failed"


@pytest.mark.parametrize(
    ("data", "code"),
    [(b'data: {"choices": [{"delta": {"content": "data: {\\"error\\": 1}"}}]}\n\n', None),
     (b'data: {"n": 1}\n\ndata: {"error": {"message": "m", "code": "engine_dead"}}\n\n', "engine_dead"),
     (b'data: {"object":"error","message":"m","type":"x","code":400}\n\n', "upstream_failed"),
     (b'data: {"error": {"message": "m", "code": null}}\n\n', "upstream_failed")],
)  # fmt: skip
def test_error_events_are_recognised_and_generated_text_never_is(data: bytes, code: str | None) -> None:
    assert sse_error_code(data) == code
