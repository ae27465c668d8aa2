"""A streamed reply's chunk frames, written with one write in flight while the next pieces are read.

Pieces that arrive while a frame is being written go out together in the next frame (at most `CHUNK_MAX_BYTES`),
so a fast stream costs fewer Redis round trips, and reading the API server never waits for Redis unless a whole
frame's worth is waiting. Frames stay in order (one write at a time) and numbered (the interceptor relays each
number once).
"""

from __future__ import annotations

import asyncio
import itertools

from tiffin.contracts.frames import CHUNK_MAX_BYTES, Frame
from tiffin.contracts.queue import DeploymentQueue


class ReplyGone(Exception):
    """The interceptor that accepted the request died: nobody can read the rest of the reply."""


class ChunkWriter:
    """Writes one request's chunk frames to its interceptor's reply stream, coalescing while a write is in flight."""

    def __init__(self, queue: DeploymentQueue, reply_to: str, request_id: str, by: str) -> None:
        self.queue = queue
        self.reply_to = reply_to
        self.request_id = request_id
        self.by = by
        self._pending: list[bytes] = []
        self._size = 0
        self._seq = itertools.count(1)
        self._in_flight: asyncio.Task[bool] | None = None

    async def put(self, data: bytes) -> None:
        """Queue `data`; it is written now if no write is in flight, else with what else arrives meanwhile.

        Raises `ReplyGone` (or the write's Redis error) for a write that failed."""
        if not data:
            return
        self._pending.append(data)
        self._size += len(data)
        if self._in_flight is not None:
            if not self._in_flight.done() and self._size < CHUNK_MAX_BYTES:
                return
            await self._settle()  # a whole frame's worth waits: only now does reading wait for Redis
        self._launch()

    async def flush(self) -> None:
        """Write everything queued and wait until it is written."""
        while self._in_flight is not None or self._pending:
            if self._in_flight is not None:
                await self._settle()
            if self._pending:
                self._launch()

    def abort(self) -> None:
        """Drop what is queued and stop a write in flight (the reply is being cut short)."""
        self._pending.clear()
        self._size = 0
        task, self._in_flight = self._in_flight, None
        if task is not None:
            task.cancel()
            if task.done() and not task.cancelled():
                task.exception()  # seen: the error that cut the reply short is handled by the caller already

    def _launch(self) -> None:
        data = b"".join(self._pending)
        body, rest = data[:CHUNK_MAX_BYTES], data[CHUNK_MAX_BYTES:]
        self._pending = [rest] if rest else []
        self._size = len(rest)
        frame = Frame.chunk(self.request_id, self.by, body, next(self._seq))
        self._in_flight = asyncio.create_task(self.queue.send(self.reply_to, frame))

    async def _settle(self) -> None:
        task, self._in_flight = self._in_flight, None
        if task is not None and not await task:  # (cancelling the caller here cancels the write too)
            raise ReplyGone
