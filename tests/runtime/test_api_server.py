"""The API server as a real process, in front of two test upstreams registered as runners in a real Redis."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from tests.runtime import NAME, Server, StartApi, chat, until
from tiffin.contracts import keys
from tiffin.contracts.frames import NOT_SERVED_HEADER
from tiffin.contracts.queue import DeploymentQueue
from tiffin.contracts.registry import Registry


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return await resp.json()


async def metric(api: Server, name: str, **labels: str) -> float:
    """One sample of the API server's /metrics (0 when absent)."""
    async with aiohttp.ClientSession() as http, http.get(f"{api.url}/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def arrivals(server: Server) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = await get_json(f"{server.url}/_test/arrivals")
    return result


async def test_replies_pass_through_unchanged(start_api: StartApi, runners: list[Server]) -> None:
    api = await start_api()
    ports = {str(r.port) for r in runners}
    async with aiohttp.ClientSession() as http:
        headers = {"X-Request-Id": "req-1"}
        async with http.post(f"{api.url}/v1/chat/completions", json=chat("hello there"), headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["X-Request-Id"] == "req-1"
            assert resp.headers["X-Upstream-Port"] in ports
            body = await resp.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == "echo: hello there"

        async with http.post(f"{api.url}/v1/completions", json={"model": NAME, "prompt": "hi"}) as resp:
            assert (await resp.json())["choices"][0]["text"] == "echo: hi"
        # An alias is rewritten to the served name: the upstream knows only that one.
        async with http.post(f"{api.url}/v1/completions", json={"model": "smol-alias", "prompt": "hi"}) as resp:
            assert resp.status == 200
        # The runner's own errors come back as they are.
        async with http.post(f"{api.url}/v1/completions", json={"model": NAME, "tiffin_test": {"status": 429}}) as resp:
            assert resp.status == 429
            assert (await resp.json())["error"]["code"] == "test_status"

        models = await get_json(f"{api.url}/v1/models")
        assert sorted(m["id"] for m in models["data"]) == ["smol", "smol-alias"]
        served = [await metric(api, "tiffin_api_requests_total", runner=r, status="200") for r in ("r1", "r2")]
        assert sum(served) == 3


async def test_stream_chunks_arrive_one_by_one(start_api: StartApi, runners: list[Server]) -> None:
    api = await start_api()
    words = "one two three four five"
    body = chat(words, stream=True, tiffin_test={"delay_s": 0.2})
    reads: list[bytes] = []
    async with aiohttp.ClientSession() as http, http.post(f"{api.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        async for data in resp.content.iter_any():
            reads.append(data)
    events = [e for e in b"".join(reads).decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    deltas = [json.loads(e.removeprefix("data: "))["choices"][0]["delta"] for e in events[:-1]]
    assert "".join(d.get("content", "") for d in deltas) == f"echo: {words}"
    # Each delayed piece came in a read of its own, as the upstream sent it: nothing buffered the stream.
    # (The final chunk and [DONE] leave the upstream together, so they may share a read.)
    pieces = [d for d in deltas if d.get("content")]
    assert len(pieces) == 6
    assert [read.count(b"data: ") for read in reads[: len(pieces)]] == [1] * len(pieces)


async def test_load_spreads_and_a_client_that_leaves_frees_its_slot(start_api: StartApi, runners: list[Server]) -> None:
    api = await start_api()

    async def held(key: str) -> None:
        async with aiohttp.ClientSession() as http:
            await http.post(f"{api.url}/v1/chat/completions", json=chat("wait", tiffin_test={"hold_once": key}))

    tasks = [asyncio.create_task(held(f"k{i}")) for i in range(4)]

    async def counts() -> list[int]:
        return [len(await arrivals(r)) for r in runners]

    async def all_arrived() -> bool:
        return sum(await counts()) == 4

    await until(all_arrived, what="4 held requests reached the runners")
    assert await counts() == [2, 2]  # least loaded first, and at most 2 (the concurrency) per runner

    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    async def disconnects() -> list[int]:
        return [await get_json(f"{r.url}/_test/disconnects") for r in runners]

    async def all_gone() -> bool:
        return await disconnects() == [2, 2]

    await until(all_gone, what="the runners saw every client leave")
    async with aiohttp.ClientSession() as http, http.post(f"{api.url}/v1/completions", json=chat("again")) as resp:
        assert resp.status == 200  # the slots came back


async def test_a_dead_runner_is_skipped_and_the_request_succeeds_on_the_other(
    start_api: StartApi, runners: list[Server]
) -> None:
    api = await start_api()
    alive, dead = runners
    dead.proc.kill()
    skipped = False
    async with aiohttp.ClientSession() as http:
        for _ in range(20):  # each request picks r1 or r2 at random while idle: r2 comes up soon
            async with http.post(f"{api.url}/v1/chat/completions", json=chat("hi")) as resp:
                assert resp.status == 200
                assert resp.headers["X-Upstream-Port"] == str(alive.port)
            if await metric(api, "tiffin_api_runner_failures_total", runner="r2", kind="connect") == 1:
                skipped = True
                break
    assert skipped, "no request ever tried the dead runner"


async def test_no_runner_within_the_deadline_is_503_with_retry_after(start_api: StartApi) -> None:
    api = await start_api()
    deadline_ms = int(time.time() * 1000) + 300
    headers = {"X-Tiffin-Wait-Deadline-Ms": str(deadline_ms), "X-Request-Id": "lonely"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{api.url}/v1/chat/completions", json=chat("anyone?"), headers=headers) as resp,
    ):
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) > 0
        assert resp.headers["X-Request-Id"] == "lonely"
        error = (await resp.json())["error"]
    assert error["code"] == "no_runner"
    assert error["type"] == "server_error"
    assert error["message"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"model": 7}', 400, None),
        (b'{"model": "gpt-4", "prompt": "x"}', 404, "model_not_found"),
        (b'{"prompt": "' + b"x" * 1_100_000 + b'"}', 413, "request_too_large"),
    ],
    ids=["not-json", "not-an-object", "model-not-a-string", "unknown-model", "too-large"],
)
async def test_bad_requests_get_openai_errors(start_api: StartApi, body: bytes, status: int, code: str | None) -> None:
    api = await start_api()
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{api.url}/v1/completions", data=io.BytesIO(body), headers=headers) as resp,
    ):
        assert resp.status == status
        error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code


async def test_a_runner_that_does_not_answer_in_time_is_504(start_api: StartApi, runners: list[Server]) -> None:
    api = await start_api(upstream_timeout_s=1)
    body = chat("slow", tiffin_test={"hold_once": "never"})
    async with aiohttp.ClientSession() as http, http.post(f"{api.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "upstream_timeout"

    async def upstream_saw_it_go() -> bool:
        counts: list[int] = [await get_json(f"{r.url}/_test/disconnects") for r in runners]
        return sum(counts) == 1

    await until(upstream_saw_it_go, what="the API server closed the timed-out upstream request")


async def test_a_runner_dying_mid_stream_ends_the_stream_with_an_error_event(
    start_api: StartApi, runners: list[Server]
) -> None:
    api = await start_api()
    body = chat("a b c d e f g h i j", stream=True, tiffin_test={"delay_s": 0.2})
    received = b""
    async with aiohttp.ClientSession() as http, http.post(f"{api.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        answering = next(r for r in runners if str(r.port) == resp.headers["X-Upstream-Port"])
        async for data in resp.content.iter_any():
            if not received:
                answering.proc.kill()
            received += data
    events = [e.removeprefix("data: ") for e in received.decode().split("\n\n") if e]
    assert "[DONE]" not in events  # never a clean finish for a cut reply
    assert json.loads(events[-1])["error"]["code"] == "upstream_failed"
    assert len(events) < 12  # fewer pieces than the full reply


async def test_sigterm_lets_an_open_stream_finish_then_exits_0(start_api: StartApi, runners: list[Server]) -> None:
    api = await start_api()
    body = chat("a b c d e f", stream=True, tiffin_test={"delay_s": 0.2})
    received = b""

    async with aiohttp.ClientSession() as http, http.post(f"{api.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        async for data in resp.content.iter_any():
            if not received:
                api.proc.popen.send_signal(signal.SIGTERM)  # mid-stream
            received += data
    assert received.endswith(b"data: [DONE]\n\n")
    assert await asyncio.to_thread(api.proc.popen.wait, 30) == 0


async def test_sigterm_answers_requests_still_waiting_for_a_runner_with_503(start_api: StartApi) -> None:
    api = await start_api()

    async def ask() -> tuple[int, dict[str, Any], str | None]:
        url = f"{api.url}/v1/chat/completions"
        async with aiohttp.ClientSession() as http, http.post(url, json=chat("hi")) as resp:
            return resp.status, await resp.json(), resp.headers.get(NOT_SERVED_HEADER)

    task = asyncio.create_task(ask())

    async def waiting() -> bool:
        return await metric(api, "tiffin_api_waiting_requests") == 1

    await until(waiting, what="the request waits for a runner")
    api.proc.popen.send_signal(signal.SIGTERM)
    status, body, not_served = await asyncio.wait_for(task, 10)  # at once, not after the shutdown timeout
    assert (status, body["error"]["code"]) == (503, "draining")
    assert not_served == "draining"  # so its proxy hands it to another replica instead of relaying the 503
    assert await asyncio.to_thread(api.proc.popen.wait, 10) == 0


async def test_a_waiting_request_is_served_once_a_runner_registers(
    start_api: StartApi, runners: list[Server], redis: Redis
) -> None:
    registry = Registry(redis, NAME, "runner", ttl_s=300)
    for rid in ("r1", "r2"):
        await registry.deregister(rid)
    api = await start_api()

    async def ask() -> tuple[int, str]:
        url = f"{api.url}/v1/chat/completions"
        async with aiohttp.ClientSession() as http, http.post(url, json=chat("hi")) as resp:
            return resp.status, resp.headers["X-Upstream-Port"]

    task = asyncio.create_task(ask())

    async def waiting() -> bool:
        return await metric(api, "tiffin_api_waiting_requests") == 1

    await until(waiting, what="the request waits for a runner")
    assert not task.done()
    await registry.register("r1", {"url": runners[0].url, "concurrency": 2})
    assert await asyncio.wait_for(task, 10) == (200, str(runners[0].port))


async def test_a_non_streamed_answer_is_saved_before_it_is_relayed(
    start_api: StartApi, runners: list[Server], redis: Redis
) -> None:
    api = await start_api(env={"TIFFIN_RESULT_TTL_S": "90"})
    async with aiohttp.ClientSession() as http:
        headers = {"X-Request-Id": "saved-1"}
        async with http.post(f"{api.url}/v1/chat/completions", json=chat("keep me"), headers=headers) as resp:
            relayed = await resp.read()
        saved = await DeploymentQueue(redis, NAME).saved_result("saved-1")
        assert saved is not None
        assert (saved.status, saved.body) == (200, relayed)
        assert saved.headers["content-type"].startswith("application/json")
        assert 0 < await redis.ttl(keys.result("saved-1")) <= 90

        # A stream is never replayed once its head is out, so there is nothing to save.
        headers = {"X-Request-Id": "streamed-1"}
        async with http.post(f"{api.url}/v1/chat/completions", json=chat("s", stream=True), headers=headers) as resp:
            await resp.read()
        assert await redis.exists(keys.result("streamed-1")) == 0


async def test_an_answer_over_the_saving_limit_is_relayed_whole_but_not_saved(
    start_api: StartApi, runners: list[Server], redis: Redis
) -> None:
    api = await start_api(env={"TIFFIN_RESULT_MAX_BYTES": "16"})
    async with aiohttp.ClientSession() as http:
        headers = {"X-Request-Id": "big-1"}
        async with http.post(f"{api.url}/v1/chat/completions", json=chat("a longer answer"), headers=headers) as resp:
            assert resp.status == 200
            assert (await resp.json())["choices"][0]["message"]["content"] == "echo: a longer answer"
    assert await redis.exists(keys.result("big-1")) == 0
