"""BatchingRedis: commands issued in one loop turn go out together, yet each caller gets its own answer or error,
scripts load themselves as usual, and a caller that gives up takes nobody else's answer with it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ResponseError

from tiffin.common.redis_batch import BatchingRedis
from tiffin.common.redis_conn import connect_bounded
from tiffin.local.redis_server import EmbeddedRedis

SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.fixture
async def batching(redis_server: EmbeddedRedis, redis: object) -> AsyncIterator[BatchingRedis]:
    """A batching client on the shared, emptied Redis (the `redis` fixture empties it)."""
    client = connect_bounded(redis_server.url, max_connections=4, timeout_s=30, batched=True)
    assert isinstance(client, BatchingRedis)
    yield client
    await client.aclose()


async def test_commands_of_one_turn_each_get_their_own_answer(batching: BatchingRedis) -> None:
    await batching.set("text", "not a number")
    answers = await asyncio.gather(
        *(batching.incr(f"n{i}") for i in range(20)), batching.incr("text"), batching.get("n3"),
        return_exceptions=True,
    )  # fmt: skip
    assert answers[:20] == [1] * 20
    assert isinstance(answers[20], ResponseError)  # one command's error is its caller's alone
    assert answers[21] in (b"1", None)  # read in the same batch, before or after its INCR: never an error
    assert await batching.get("n19") == b"1"


async def test_scripts_load_themselves_inside_a_batch(batching: BatchingRedis) -> None:
    await batching.script_flush()
    script = batching.register_script(SCRIPT)
    totals = await asyncio.gather(*(script(keys=["total"], args=[2]) for _ in range(10)))
    assert sorted(totals) == list(range(2, 21, 2))


async def test_a_caller_that_gives_up_leaves_the_others_their_answers(batching: BatchingRedis) -> None:
    first = asyncio.create_task(batching.incr("a"))  # opens the batch
    second = asyncio.create_task(batching.incr("b"))
    third = asyncio.create_task(batching.incr("c"))
    await asyncio.sleep(0)  # all three issued: the batch is gathering
    first.cancel()
    second.cancel()
    async with asyncio.timeout(30):
        assert await third == 1
    assert first.cancelled() and second.cancelled()
