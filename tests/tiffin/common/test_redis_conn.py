"""Clients from `connect` survive a Redis restart: a pooled connection found dead is replaced, not an error."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from tiffin.common.redis_conn import connect
from tiffin.local.redis_server import EmbeddedRedis


async def test_the_first_command_after_a_restart_succeeds(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    await asyncio.to_thread(server.start)
    client = connect(server.url)
    try:
        # Several pooled connections, all idle when Redis goes.
        await asyncio.gather(*(client.set(f"k{n}", n) for n in range(8)))
        await asyncio.to_thread(server.stop)
        with pytest.raises(RedisConnectionError):
            await client.get("k0")  # down: still a fast, clear error
        again = EmbeddedRedis(tmp_path / "redis", port=server.port)
        await asyncio.to_thread(again.start)
        try:
            values = await asyncio.gather(*(client.get(f"k{n}") for n in range(8)))
            assert values == [str(n).encode() for n in range(8)]  # the append-only file kept them
        finally:
            await asyncio.to_thread(again.stop)
    finally:
        await client.aclose()
