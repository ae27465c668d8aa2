"""The interceptor's single reply reader: one blocked Redis read for all requests, frames handed out by id."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tiffin.common.backoff import Backoff
from tiffin.contracts import keys
from tiffin.contracts.frames import Frame

log = structlog.get_logger("interceptor.replies")

_RETRY_MAX_S = 0.5

READ_BLOCK_MS = 2000
# Frames per read: a reply frame can carry up to ~64 KB, so this bounds one read's memory (~6 MB) whatever the
# replicas send; a busy reader simply reads again at once.
READ_COUNT = 100
DEFAULT_BUFFER_BYTES = 1_048_576
# Frames already read stay in the reply stream until the next trim: at most this long, or this many body bytes.
TRIM_EVERY_S = 0.1
TRIM_EVERY_BYTES = 1_048_576


class Inbox:
    """One request's frames waiting to be relayed, bounded in bytes.

    A client that reads slower than the model writes makes frames pile up here while a write to it is blocked
    (see `writing`); past `limit` bytes they are dropped, the inbox is marked `overflowed`, and the blocked write
    is cut at once. Frames that arrive while the relay is not blocked on its client (one Redis read can bring many
    at once) are only queued: the relay takes them at its next turn, so a burst is never mistaken for a slow client.
    """

    def __init__(self, limit: int = DEFAULT_BUFFER_BYTES) -> None:
        self.limit = limit
        self.buffered = 0
        self.overflowed = False
        self._frames: asyncio.Queue[Frame] = asyncio.Queue()
        self._write_deadline: asyncio.Timeout | None = None

    def put_nowait(self, frame: Frame) -> None:
        if self.overflowed:
            return
        self.buffered += len(frame.data)
        if self.buffered > self.limit and self._write_deadline is not None:
            self._overflow()
            return
        self._frames.put_nowait(frame)

    async def get(self) -> Frame:
        frame = await self._frames.get()
        self.buffered -= len(frame.data)
        return frame

    def take_ready(self) -> list[Frame]:
        """Every frame already here, without waiting (the caller relays them before any later one)."""
        frames: list[Frame] = []
        while not self._frames.empty():
            frame = self._frames.get_nowait()
            self.buffered -= len(frame.data)
            frames.append(frame)
        return frames

    def empty(self) -> bool:
        return self._frames.empty()

    @contextlib.asynccontextmanager
    async def writing(self, timeout_s: float) -> AsyncIterator[None]:
        """Bound one write to the client by `timeout_s`, and cut it at once if the inbox overflows meanwhile."""
        async with asyncio.timeout(timeout_s) as deadline:
            self._write_deadline = deadline
            try:
                yield
            finally:
                self._write_deadline = None

    def _overflow(self) -> None:
        self.overflowed = True
        # Let go of everything held for this client; the relay sees `overflowed` at its next step.
        while not self._frames.empty():
            self._frames.get_nowait()
        self.buffered = 0
        self._frames.put_nowait(Frame.fail("", "", 0, "reply buffer overflowed", "slow_reader"))
        if self._write_deadline is not None:
            self._write_deadline.reschedule(asyncio.get_running_loop().time())


class ReplyReader:
    """Owns `tiffin:reply:{id}`: reads it in one loop and routes each frame to the waiting request."""

    def __init__(self, redis: Redis, interceptor_id: str, ttl_s: float = 60.0) -> None:
        self.redis = redis
        self.key = keys.reply(interceptor_id)
        # The stream expires if this interceptor dies, so proxies stop writing to it (they never recreate it).
        self.ttl_s = ttl_s
        self._inboxes: dict[str, Inbox] = {}
        self._last_id = b"0-0"
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, request_id: str, buffer_bytes: int = DEFAULT_BUFFER_BYTES) -> Inbox:
        """Register a request before it is enqueued, so no frame can arrive unseen."""
        inbox = Inbox(buffer_bytes)
        self._inboxes[request_id] = inbox
        return inbox

    def unsubscribe(self, request_id: str) -> None:
        self._inboxes.pop(request_id, None)

    async def start(self) -> None:
        await self._ensure_stream()
        self._task = asyncio.create_task(self._run(), name="reply-reader")

    async def stop(self) -> None:
        if self._task is not None:
            # Cancel until it is done: on Python 3.11 asyncio.wait_for (which redis-py uses to send every
            # command) can swallow a cancellation that lands as the send completes, and the loop would run on.
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=0.01)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError):
            await self.redis.delete(self.key)

    async def _ensure_stream(self) -> None:
        """Create the stream (a marker entry; streams persist when emptied) and set its expiry."""
        if not await self.redis.pexpire(self.key, int(self.ttl_s * 1000)):
            await self.redis.xadd(self.key, {"kind": "open"})
            await self.redis.pexpire(self.key, int(self.ttl_s * 1000))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        refreshed = trimmed = loop.time()
        untrimmed, dirty = 0, False  # body bytes read since the last trim; whether any entry was
        retry = Backoff("reply_reader", max_s=_RETRY_MAX_S)
        while True:
            try:
                reply: Any = await self.redis.xread({self.key: self._last_id}, count=READ_COUNT, block=READ_BLOCK_MS)
                for _stream, entries in reply or []:
                    for entry_id, fields in entries:
                        self._last_id = entry_id
                        untrimmed, dirty = untrimmed + len(fields.get(b"data", b"")), True
                        self._dispatch(fields)
                # Everything up to what was read is delivered: keep the stream short. Not after every read (a
                # round trip each, under load most of a read's cost): every TRIM_EVERY_S or TRIM_EVERY_BYTES, and
                # when a read finds nothing new.
                due = not reply or untrimmed >= TRIM_EVERY_BYTES or loop.time() - trimmed >= TRIM_EVERY_S
                if dirty and due:
                    await self.redis.xtrim(self.key, minid=self._last_id)
                    trimmed, untrimmed, dirty = loop.time(), 0, False
                # A read that timed out may mean the stream is gone (expired or deleted under us): proxies
                # never recreate it, so every reply would be dropped until the next refresh; check at once.
                if not reply or loop.time() - refreshed > self.ttl_s / 4:
                    await self._ensure_stream()
                    refreshed = loop.time()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                # Redis unreachable (restarting): back off briefly, as replies must flow again as soon as it is
                # back, then resume from the last id. Logged once per outage, not on every retry.
                await retry.failed(exc)
                with contextlib.suppress(RedisError, OSError):
                    await self._ensure_stream()
                continue
            retry.succeeded()

    def _dispatch(self, fields: dict[bytes, bytes]) -> None:
        if b"rid" not in fields:
            return  # the stream's marker entry
        try:
            frame = Frame.from_fields(fields)
        except (KeyError, ValueError) as exc:
            log.error("bad_reply_frame", error=str(exc))
            return
        inbox = self._inboxes.get(frame.request_id)
        if inbox is not None:  # else: the request has already been answered, timed out or cancelled
            inbox.put_nowait(frame)
