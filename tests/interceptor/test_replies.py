"""The interceptor's reply reader on a real Redis: one stream, frames handed to waiting requests by id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from interceptor.replies import READ_BLOCK_MS, ReplyReader
from tiffin.contracts import keys
from tiffin.contracts.frames import Frame
from tiffin.contracts.queue import DeploymentQueue

TIMEOUT_S = 5.0


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = TIMEOUT_S) -> None:
    """Poll an observable condition until it holds (bounded)."""
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.01)


async def receive(inbox: asyncio.Queue[Frame], n: int) -> list[Frame]:
    async with asyncio.timeout(TIMEOUT_S):
        return [await inbox.get() for _ in range(n)]


@pytest.fixture
async def reader(redis: Redis) -> AsyncIterator[ReplyReader]:
    reader = ReplyReader(redis, "interceptor-1")
    await reader.start()
    yield reader
    await reader.stop()


@pytest.fixture
def sender(redis: Redis) -> DeploymentQueue:
    """Proxies write frames through the queue contract (NOMKSTREAM appends)."""
    return DeploymentQueue(redis, "llama")


async def test_frames_reach_the_subscribed_request_in_order(reader: ReplyReader, sender: DeploymentQueue) -> None:
    inbox = reader.subscribe("r1")
    sent = [Frame.head("r1", "proxy-1", 200, {"content-type": "text/event-stream"})]
    sent += [Frame.chunk("r1", "proxy-1", f"data: {i}\n\n".encode()) for i in range(20)]
    sent.append(Frame.end("r1", "proxy-1"))

    for frame in sent:
        await sender.send(reader.key, frame)

    assert await receive(inbox, len(sent)) == sent
    assert inbox.empty()


async def test_interleaved_replies_are_routed_to_their_own_requests(
    reader: ReplyReader, sender: DeploymentQueue
) -> None:
    first, second = reader.subscribe("r1"), reader.subscribe("r2")
    for i in range(10):
        await sender.send(reader.key, Frame.chunk("r1", "p", b"one-%d" % i))
        await sender.send(reader.key, Frame.chunk("r2", "p", b"two-%d" % i))

    assert [f.data for f in await receive(first, 10)] == [b"one-%d" % i for i in range(10)]
    assert [f.data for f in await receive(second, 10)] == [b"two-%d" % i for i in range(10)]


async def test_frames_for_unknown_or_unsubscribed_requests_are_dropped(
    reader: ReplyReader, sender: DeploymentQueue
) -> None:
    waiting = reader.subscribe("r1")
    gone = reader.subscribe("r2")
    reader.unsubscribe("r2")

    await sender.send(reader.key, Frame.chunk("ghost", "p", b"nobody asked"))
    await sender.send(reader.key, Frame.chunk("r2", "p", b"too late"))
    await sender.send(reader.key, Frame.end("r1", "p"))

    # Frames are handed out in stream order, so once r1's frame is here the earlier ones were handled.
    assert await receive(waiting, 1) == [Frame.end("r1", "p")]
    assert gone.empty()
    assert waiting.empty()


async def test_malformed_frame_is_skipped_and_reading_goes_on(
    reader: ReplyReader, sender: DeploymentQueue, redis: Redis
) -> None:
    inbox = reader.subscribe("r1")

    await redis.xadd(reader.key, {"rid": "r1", "kind": "bogus", "by": "p"})
    await redis.xadd(reader.key, {"rid": "r1", "kind": "head", "by": "p", "status": "not-a-number"})
    await sender.send(reader.key, Frame.end("r1", "p"))

    assert await receive(inbox, 1) == [Frame.end("r1", "p")]
    assert inbox.empty()


async def test_stream_is_trimmed_after_reading(reader: ReplyReader, sender: DeploymentQueue, redis: Redis) -> None:
    inbox = reader.subscribe("r1")
    total = 350
    for i in range(total):
        await sender.send(reader.key, Frame.chunk("r1", "p", b"%d" % i))

    received = await receive(inbox, total)
    assert [f.data for f in received] == [b"%d" % i for i in range(total)]

    # Trimming is approximate (whole stream nodes of up to 100 entries), but what was read does not pile up.
    async def trimmed() -> bool:
        return await redis.xlen(reader.key) <= 101

    await eventually(trimmed)
    last: Any = await redis.xrevrange(reader.key, count=1)
    assert last[0][1][b"data"] == b"%d" % (total - 1)  # the newest entry is kept: the reader resumes after it


async def test_reply_stream_has_a_ttl(reader: ReplyReader, redis: Redis) -> None:
    assert await redis.exists(reader.key) == 1
    assert 0 < await redis.ttl(reader.key) <= reader.ttl_s


async def test_reply_stream_ttl_is_refreshed_while_reading(redis: Redis) -> None:
    reader = ReplyReader(redis, "interceptor-2", ttl_s=4)
    await reader.start()
    try:
        await redis.expire(reader.key, 1000)  # far from what the reader sets: its refresh is observable

        async def refreshed() -> bool:
            return 0 < await redis.ttl(reader.key) <= reader.ttl_s

        await eventually(refreshed, timeout_s=10)
    finally:
        await reader.stop()


async def test_reply_stream_deleted_under_the_reader_is_recreated_and_delivery_resumes(
    reader: ReplyReader, sender: DeploymentQueue, redis: Redis
) -> None:
    inbox = reader.subscribe("r1")
    await sender.send(reader.key, Frame.chunk("r1", "p", b"before"))
    assert [f.data for f in await receive(inbox, 1)] == [b"before"]

    await redis.delete(reader.key)

    async def recreated() -> bool:
        return await redis.exists(reader.key) == 1 and await redis.ttl(reader.key) > 0

    await eventually(recreated, timeout_s=10)
    await sender.send(reader.key, Frame.chunk("r1", "p", b"after"))
    assert [f.data for f in await receive(inbox, 1)] == [b"after"]


async def test_stop_deletes_the_stream_and_proxies_cannot_recreate_it(redis: Redis, sender: DeploymentQueue) -> None:
    reader = ReplyReader(redis, "interceptor-3")
    await reader.start()
    assert await redis.exists(keys.reply("interceptor-3")) == 1

    await reader.stop()

    assert await redis.exists(reader.key) == 0
    await sender.send(reader.key, Frame.end("r1", "p"))
    assert await redis.exists(reader.key) == 0


async def test_stop_ends_the_reader_loop(redis: Redis) -> None:
    reader = ReplyReader(redis, "interceptor-4")
    await reader.start()
    task = next(t for t in asyncio.all_tasks() if t.get_name() == "reply-reader")

    await reader.stop()

    assert task.done()


async def test_stop_returns_promptly_right_after_frames_were_read(redis: Redis, sender: DeploymentQueue) -> None:
    # Stopping just after a frame is handed out lands while the reader trims the stream; on Python 3.11 a
    # cancellation there could be swallowed by redis-py's send (asyncio.wait_for) and stop() never returned.
    for i in range(30):
        reader = ReplyReader(redis, f"interceptor-stop-{i}")
        await reader.start()
        inbox = reader.subscribe("r1")
        await sender.send(reader.key, Frame.end("r1", "p"))
        await receive(inbox, 1)

        stopping = asyncio.create_task(reader.stop())
        await asyncio.wait({stopping}, timeout=READ_BLOCK_MS / 2000)  # half of one blocked read

        assert stopping.done(), f"round {i}: stop() did not return"
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "reply-reader"], f"round {i}"
        assert await redis.exists(reader.key) == 0


async def test_stop_without_start_is_harmless(redis: Redis) -> None:
    reader = ReplyReader(redis, "interceptor-5")
    await redis.xadd(reader.key, {"kind": "open"})

    await reader.stop()

    assert await redis.exists(reader.key) == 0
