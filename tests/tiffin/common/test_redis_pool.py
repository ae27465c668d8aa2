"""The pools' fast path: an idle connection is reused without waiting, and the pool's bound and its fair,
bounded wait still hold when connections run out."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from tiffin.common.redis_pool import FAST_PATH, FastBlockingConnectionPool, FastConnectionPool
from tiffin.local.redis_server import EmbeddedRedis


async def test_commands_one_after_another_reuse_one_connection(redis_server: EmbeddedRedis) -> None:
    pool = FastConnectionPool.from_url(redis_server.url, max_connections=8)
    try:
        for _ in range(5):
            connection = await pool.get_connection()
            await connection.send_command("PING")
            assert await connection.read_response() == b"PONG"
            await pool.release(connection)
        assert len(pool._available_connections) == 1
        assert not pool._in_use_connections
    finally:
        await pool.disconnect()


async def test_a_full_blocking_pool_makes_the_next_task_wait_and_hands_it_the_first_connection_back(
    redis_server: EmbeddedRedis,
) -> None:
    pool = FastBlockingConnectionPool.from_url(redis_server.url, max_connections=2, timeout=30)
    try:
        held = [await pool.get_connection(), await pool.get_connection()]
        waiter = asyncio.create_task(pool.get_connection())
        await asyncio.sleep(0)  # let it queue on the pool (nothing to await: it blocks inside redis-py)
        assert not waiter.done()
        await pool.release(held[0])  # a task waits: the slow path, which wakes it
        async with asyncio.timeout(30):
            got = await waiter
        assert got is held[0]
        for connection in (got, held[1]):
            await pool.release(connection)
        assert len(pool._available_connections) == 2
    finally:
        await pool.disconnect()


async def test_a_full_blocking_pool_still_gives_up_after_its_timeout(redis_server: EmbeddedRedis) -> None:
    pool = FastBlockingConnectionPool.from_url(redis_server.url, max_connections=1, timeout=0.2)
    try:
        held = await pool.get_connection()
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await pool.get_connection()
        await pool.release(held)
        again = await pool.get_connection()  # the fast path after the wait ended
        assert again is held
        await pool.release(again)
    finally:
        await pool.disconnect()


def test_the_installed_redis_py_takes_the_fast_path() -> None:
    # Off (silently slower) on a redis-py whose pool internals moved: this says so when an upgrade does that.
    assert FAST_PATH
