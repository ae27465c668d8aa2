"""The proxy's chunk writer on a real Redis: order, coalescing, the frame size cap, and a vanished reply stream."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from proxy.chunks import ChunkWriter, ReplyGone
from tiffin.contracts import keys
from tiffin.contracts.frames import CHUNK_MAX_BYTES, Frame, FrameKind
from tiffin.contracts.queue import DeploymentQueue

REPLY = keys.reply("chunks-test")


async def frames(redis: Redis) -> list[Frame]:
    entries = await redis.xrange(REPLY)
    return [Frame.from_fields(fields) for _id, fields in entries if b"rid" in fields]


async def test_pieces_arrive_whole_in_order_numbered_and_coalesced_while_a_write_is_in_flight(redis: Redis) -> None:
    await redis.xadd(REPLY, {"kind": "open"})
    writer = ChunkWriter(DeploymentQueue(redis, "d"), REPLY, "r1", "proxy-1")
    pieces = [f"data: {n}\n\n".encode() for n in range(200)]
    for piece in pieces:
        await writer.put(piece)  # no await of Redis between puts: all but the first wait for the one in flight
    await writer.flush()
    written = await frames(redis)
    assert all(f.kind is FrameKind.CHUNK and f.by == "proxy-1" and f.request_id == "r1" for f in written)
    assert b"".join(f.data for f in written) == b"".join(pieces)
    assert [f.seq for f in written] == list(range(1, len(written) + 1))
    assert len(written) < len(pieces)  # pieces that came during a write shared the next frame


async def test_no_frame_is_larger_than_the_cap(redis: Redis) -> None:
    await redis.xadd(REPLY, {"kind": "open"})
    writer = ChunkWriter(DeploymentQueue(redis, "d"), REPLY, "r2", "proxy-1")
    body = bytes(range(256)) * 1024  # 256 KiB
    for offset in range(0, len(body), 10_000):
        await writer.put(body[offset : offset + 10_000])
    await writer.flush()
    written = await frames(redis)
    assert b"".join(f.data for f in written) == body
    assert max(len(f.data) for f in written) <= CHUNK_MAX_BYTES


async def test_a_vanished_reply_stream_is_reported(redis: Redis) -> None:
    writer = ChunkWriter(DeploymentQueue(redis, "d"), REPLY, "r3", "proxy-1")  # no reply stream: its reader died
    with pytest.raises(ReplyGone):
        await writer.put(b"data: 1\n\n")
        await writer.flush()
    assert not await redis.exists(REPLY)  # never recreated


async def test_abort_stops_a_write_in_flight_and_drops_what_waits(redis: Redis) -> None:
    await redis.xadd(REPLY, {"kind": "open"})
    writer = ChunkWriter(DeploymentQueue(redis, "d"), REPLY, "r4", "proxy-1")
    await writer.put(b"first")
    await writer.put(b"second")
    writer.abort()
    await asyncio.sleep(0)  # let the cancelled write settle
    await writer.flush()  # nothing left to write
    assert b"second" not in b"".join(f.data for f in await frames(redis))
