"""The deployment queue contract: both sides (interceptor enqueues and cancels, proxies take and answer).

Each request has a state hash (`keys.request`) next to its stream entry. Transitions are atomic scripts:

    queued --take--> taken --start (head frame written, by its owner only)--> started --finish--> (entry deleted)
       \\--cancel (client gone / wait deadline)--> cancelled: proxies acknowledge and skip it
    taken --release (its API server turned it away unserved, or died before a reply byte)--> queued again

A taken-but-not-started entry whose proxy died is delivered again; a started one is answered with an error
frame instead, because reply bytes may already have reached the client.

At most once at the runner: the API server saves a non-streamed answer (`keys.result`) before it replies, so a
replica that takes the request again (`take` says 'done') answers from that record instead of running it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from tiffin.contracts import keys
from tiffin.contracts import queue_scripts as lua
from tiffin.contracts.exceptions import BackendUnavailable, QueueFull
from tiffin.contracts.frames import Envelope, Fields, Frame

# Reply streams are read continuously; the cap only guards against a reader that stopped for good.
REPLY_STREAM_MAXLEN = 100_000

_SAVE_RESULT_SHA = hashlib.sha1(lua.SAVE_RESULT.encode()).hexdigest()  # what EVALSHA names it by

StartOutcome = Literal["started", "gone", "lost"]


@dataclass(frozen=True)
class SavedResult:
    """A runner's whole non-streamed answer to one request, as its API server relayed it."""

    status: int
    headers: dict[str, str]
    body: bytes


async def save_result(redis: Redis, request_id: str, result: SavedResult, ttl_s: float) -> None:
    """Record a runner's answer before relaying it (the API server's side of at-most-once), kept `ttl_s`."""
    args = (max(1, int(ttl_s)), result.status, json.dumps(result.headers), result.body)
    try:
        await redis.evalsha(_SAVE_RESULT_SHA, 1, keys.result(request_id), *args)
    except NoScriptError:  # Redis restarted (or its script cache was flushed): EVAL sends it and caches it again
        await redis.eval(lua.SAVE_RESULT, 1, keys.result(request_id), *args)


def now_ms() -> int:
    return int(time.time() * 1000)


async def redis_clock_offset_ms(redis: Redis) -> int:
    """How far Redis's clock is ahead of this host's (negative: behind), measured once, to within a round trip."""
    before = now_ms()
    seconds, micros = await redis.time()
    after = now_ms()
    return int(seconds) * 1000 + int(micros) // 1000 - (before + after) // 2


@dataclass(frozen=True)
class Admission:
    """An enqueued request, and whether it found the deployment cold (no ready API server or runner)."""

    entry_id: bytes
    cold: bool
    woke: bool
    """This request started the cold start (the first to find the deployment cold)."""


@dataclass(frozen=True)
class Delivery:
    """A queue entry handed to a proxy."""

    entry_id: bytes
    envelope: Envelope
    redelivered: bool = False


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class DeploymentQueue:
    """One deployment's request stream and the request states beside it."""

    def __init__(self, redis: Redis, deployment: str, reader: Redis | None = None) -> None:
        """`reader`: the client for `read`'s blocking XREADGROUP, when `redis` may not block (a batching client)."""
        self.redis = redis
        self.reader = reader or redis
        self.deployment = deployment
        self.key = keys.queue(deployment)
        self._enqueue = redis.register_script(lua.ENQUEUE)
        self._cancel = redis.register_script(lua.CANCEL)
        self._take = redis.register_script(lua.TAKE)
        self._claim = redis.register_script(lua.CLAIM)
        self._release = redis.register_script(lua.RELEASE)
        self._start = redis.register_script(lua.START)
        self._answer = redis.register_script(lua.ANSWER)
        self._end = redis.register_script(lua.END)

    async def ensure_group(self) -> None:
        """Create the stream and its consumer group if missing (idempotent)."""
        try:
            await self.redis.xgroup_create(self.key, keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # --- interceptor side -------------------------------------------------------------------------

    async def enqueue(self, envelope: Envelope, max_waiting: int, ttl_s: int) -> bytes:
        """Add a request unless `max_waiting` requests already wait; returns the stream entry id."""
        return (await self.admit(envelope, max_waiting, ttl_s)).entry_id

    async def admit(
        self,
        envelope: Envelope,
        max_waiting: int,
        ttl_s: int,
        wake_ttl_s: float = 600,
        accept_within_s: float | None = None,
        redis_clock_offset_ms: int = 0,
    ) -> Admission:
        """Enqueue (bounded like `enqueue`), mark activity, and publish a wake if the deployment is not warm.

        `wake_ttl_s` bounds how long a cold start started by this request is remembered if it never finishes.
        `accept_within_s`: how long the caller waits for this reply; a script Redis runs later than that (by its
        clock) queues nothing, so a request answered 503 meanwhile is never served to nobody.
        `redis_clock_offset_ms`: how far Redis's clock is ahead of this host's (see `redis_clock_offset_ms`).
        """
        now = now_ms()
        until = "" if accept_within_s is None else str(now + redis_clock_offset_ms + int(accept_within_s * 1000))
        arrived = (envelope.enqueued_ms or now) + redis_clock_offset_ms  # a cold start's phase 0, by Redis's clock
        args: list[str | bytes | int] = [max_waiting, keys.GROUP, ttl_s, now, self.deployment, keys.WAKE_CHANNEL,
                                         int(wake_ttl_s * 1000), envelope.request_id, until, arrived]  # fmt: skip
        for name, value in envelope.to_fields().items():
            args.extend((name, value))
        script_keys = [self.key, keys.request(envelope.request_id), keys.activity(self.deployment),
                       keys.replicas(self.deployment, "api"), keys.replicas(self.deployment, "runner"),
                       keys.waking(self.deployment), keys.cold_start_phases(self.deployment)]  # fmt: skip
        reply: Any = await self._enqueue(keys=script_keys, args=args)
        if reply is None:
            raise QueueFull(f"deployment '{self.deployment}' has {max_waiting} requests waiting already; retry shortly")
        entry, cold = reply
        if int(cold) < 0:
            raise BackendUnavailable(f"the queue of '{self.deployment}' answered too late; nothing was queued")
        return Admission(bytes(entry), cold=int(cold) > 0, woke=int(cold) == 2)

    async def cancel(self, request_id: str, entry_id: bytes, *, even_if_taken: bool) -> str | None:
        """Cancel a request; returns the state it is left in ('cancelled', 'taken', 'started', None if gone)."""
        state = await self._cancel(
            keys=[keys.request(request_id), self.key, keys.cancels(self.deployment)],
            args=[entry_id, "1" if even_if_taken else "0", request_id],
        )
        return _text(state)

    async def forget(self, request_id: str) -> None:
        await self.redis.delete(keys.request(request_id))

    async def oldest_waiting_ms(self) -> int | None:
        """Epoch-ms at which the oldest request still waiting (not yet read by a proxy) was enqueued."""
        waiting, in_flight = await self.depth()
        if waiting == 0:
            return None
        # Pending entries are at most `in_flight`, so one of the first in_flight + 1 entries is waiting.
        entries: Any = await self.redis.xrange(self.key, count=in_flight + 1)
        pending: set[bytes] = set()
        if in_flight:
            items: Any = await self.redis.xpending_range(self.key, keys.GROUP, min="-", max="+", count=in_flight)
            pending = {bytes(item["message_id"]) for item in items}
        for entry_id, _fields in entries:
            if bytes(entry_id) not in pending:
                return int(bytes(entry_id).split(b"-")[0])
        return None

    async def depth(self) -> tuple[int, int]:
        """(waiting, in flight at proxies) for this deployment."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self.key)
            pipe.xpending(self.key, keys.GROUP)
            length, pending = await pipe.execute(raise_on_error=False)
        if isinstance(length, Exception):
            raise length
        if isinstance(pending, ResponseError) and "NOGROUP" in str(pending):
            return int(length), 0  # no group yet (no proxy ever started): whatever is queued is waiting
        if isinstance(pending, Exception):
            raise pending
        in_flight = int(pending["pending"])
        return max(0, int(length) - in_flight), in_flight

    # --- proxy side -------------------------------------------------------------------------------

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Delivery]:
        """New entries for this consumer (blocks up to `block_ms`)."""
        reply: Any = await self.reader.xreadgroup(keys.GROUP, consumer, {self.key: ">"}, count=count, block=block_ms)
        out: list[Delivery] = []
        for _stream, entries in reply or []:
            out.extend(self._deliveries(entries, redelivered=False))
        return out

    async def take(self, request_id: str, consumer: str, reply_to: str | None = None) -> str | None:
        """Claim the request for serving: 'taken' to serve it, 'done' to answer it from `saved_result` (a runner
        answered it already); with `reply_to`, 'orphaned' if that reply stream is gone (taken, but nobody waits:
        the `reply_open` check in the same round trip); anything else means skip it (see module docstring)."""
        script_keys = [keys.request(request_id), keys.result(request_id), keys.waking(self.deployment),
                       keys.cold_start_phases(self.deployment), *([reply_to] if reply_to else [])]  # fmt: skip
        state = await self._take(keys=script_keys, args=[consumer, now_ms(), request_id])
        return _text(state)

    async def cancellations(self, stop: asyncio.Event, on_cancel: Callable[[str], None]) -> None:
        """Call `on_cancel(request_id)` for each request of this deployment cancelled while a proxy held it,
        until `stop` is set. Pushed, so a proxy stops work at once; the request state stays the authority (a
        push missed while Redis was unreachable is caught by the proxy's poll)."""
        while not stop.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.cancels(self.deployment))
                while not stop.is_set():
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        on_cancel(_text(message["data"]) or "")
            except (RedisError, OSError):
                await asyncio.sleep(0.5)  # Redis unreachable: the poll still catches cancels; resubscribe
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def state(self, request_id: str) -> str | None:
        return _text(await self.redis.hget(keys.request(request_id), "state"))

    async def states(self, request_ids: list[str]) -> list[str | None]:
        """The states of several requests, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in request_ids:
                pipe.hget(keys.request(rid), "state")
            found: list[Any] = await pipe.execute()
        return [_text(state) for state in found]

    async def owner(self, request_id: str) -> str | None:
        """The consumer that last took the request."""
        return _text(await self.redis.hget(keys.request(request_id), "owner"))

    async def start(self, envelope: Envelope, head: Frame) -> StartOutcome:
        """Write the head frame and mark the request started, atomically: from here it is never replayed.

        Only the request's owner (the consumer that signs `head`) may. 'gone': the interceptor's reply stream is
        gone (that interceptor died: nobody will read). 'lost': the request is no longer the signer's to answer
        (cancelled, or reclaimed by another replica that thought this one dead).
        """
        args: list[str | bytes | int] = [head.by, REPLY_STREAM_MAXLEN]
        for name, value in head.to_fields().items():
            args.extend((name, value))
        outcome: Any = await self._start(keys=[keys.request(envelope.request_id), envelope.reply_to], args=args)
        return cast(StartOutcome, _text(outcome))

    async def answer(self, delivery: Delivery, frames: list[Frame]) -> StartOutcome:
        """Write a whole answer (head, chunks, end: all signed by one consumer, its owner) and acknowledge it, in
        one step: a client gets all of it or none, and a request answered is never delivered again.

        Safe to call again after an unknown outcome. Outcomes as for `start`.
        """
        envelope = delivery.envelope
        args: list[str | bytes | int] = [frames[0].by, REPLY_STREAM_MAXLEN, keys.GROUP, delivery.entry_id, now_ms(),
                                         len(frames)]  # fmt: skip
        for frame in frames:
            fields = frame.to_fields()
            args.append(2 * len(fields))
            for name, value in fields.items():
                args.extend((name, value))
        script_keys = [keys.request(envelope.request_id), envelope.reply_to, self.key,
                       keys.result(envelope.request_id), keys.activity(self.deployment)]  # fmt: skip
        outcome: Any = await self._answer(keys=script_keys, args=args)
        return cast(StartOutcome, _text(outcome))

    async def count_drop(self, request_id: str) -> int:
        """Count one API server lost under this request before any reply byte; returns the count so far."""
        return int(await self.redis.hincrby(keys.request(request_id), "drops", 1))

    async def saved_result(self, request_id: str) -> SavedResult | None:
        """The answer a runner already gave this request, saved by its API server (None if there is none)."""
        raw: Any = await self.redis.hgetall(keys.result(request_id))
        if not raw:
            return None
        return SavedResult(int(raw[b"status"]), json.loads(raw[b"headers"]), bytes(raw[b"body"]))

    async def release(self, delivery: Delivery, consumer: str) -> bytes | None:
        """Queue a taken, unstarted request again for another replica; returns its new entry id (None: not ours).

        It goes to the back of the queue and does not count against the bound: it was accepted already.
        """
        args: list[str | bytes] = [keys.GROUP, delivery.entry_id, consumer]
        for name, value in delivery.envelope.to_fields().items():
            args.extend((name, value))
        new_id: Any = await self._release(keys=[self.key, keys.request(delivery.envelope.request_id)], args=args)
        return bytes(new_id) if new_id else None

    async def send(self, reply_to: str, frame: Frame) -> bool:
        """Append a frame to an interceptor's reply stream (never recreating an expired one).

        Returns False if the stream is gone (its interceptor died).
        """
        written = await self.redis.xadd(
            reply_to,
            frame.to_fields(),  # type: ignore[arg-type]
            maxlen=REPLY_STREAM_MAXLEN,
            approximate=True,
            nomkstream=True,
        )
        return written is not None

    async def end(self, delivery: Delivery, frame: Frame) -> bool:
        """A stream's last frame, and its entry acknowledged and its saved result dropped (as `finish`), in one
        step (a script). Returns False if the reply stream is gone (the entry is acknowledged all the same)."""
        envelope = delivery.envelope
        args: list[str | bytes | int] = [REPLY_STREAM_MAXLEN, keys.GROUP, delivery.entry_id, now_ms()]
        for name, value in frame.to_fields().items():
            args.extend((name, value))
        script_keys = [envelope.reply_to, self.key, keys.result(envelope.request_id), keys.activity(self.deployment)]
        written: Any = await self._end(keys=script_keys, args=args)  # the idle period starts when work ends
        return bool(written)

    async def holds(self, consumer: str, entry_id: bytes) -> bool:
        """Whether the entry is pending for `consumer`: read or claimed by it, and not acknowledged since (an answer,
        a hand-back or a skip acknowledges it; a reclaim makes it another consumer's)."""
        items: Any = await self.redis.xpending_range(
            self.key, keys.GROUP, min=entry_id, max=entry_id, count=1, consumername=consumer
        )
        return bool(items)

    async def reply_open(self, reply_to: str) -> bool:
        """Whether the interceptor behind `reply_to` is still there to read a reply."""
        return bool(await self.redis.exists(reply_to))

    async def finish(self, entry_id: bytes, request_id: str | None = None) -> None:
        """Acknowledge and delete an entry: answered, skipped, or failed with an error frame. With `request_id`,
        its saved result goes too, in the same transaction: it was needed only until the entry was acknowledged."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.key, keys.GROUP, entry_id)
            pipe.xdel(self.key, entry_id)
            if request_id is not None:
                pipe.delete(keys.result(request_id))
            pipe.set(keys.activity(self.deployment), now_ms())  # the idle period starts when work ends
            await pipe.execute()

    async def reclaim(self, consumer: str, is_alive: Callable[[str], Awaitable[bool]], count: int) -> list[Delivery]:
        """Claim up to `count` pending entries whose consumer is no longer alive, and beyond that every one whose
        reply had started: those need only their error frame, which must not wait for a free slot.

        Idle time alone is no sign of death (a healthy LLM stream can run for minutes), so ownership is
        judged by the owner's heartbeat; claiming only while the dead owner still holds the entry makes
        racing claimers safe.
        """
        claimed: list[Delivery] = []
        verdicts: dict[str, bool] = {consumer: True}
        async for item in self._pending():
            owner = _text(item["consumer"]) or ""
            if owner not in verdicts:
                verdicts[owner] = await is_alive(owner)
            if verdicts[owner]:
                continue
            if len(claimed) >= count and not await self._started(item["message_id"]):
                continue  # left for a replica with a free slot (or this one, next round)
            entry: Any = await self._claim(keys=[self.key], args=[keys.GROUP, consumer, item["message_id"], owner])
            if not entry:  # taken by a racing reclaimer, or deleted while pending and now acknowledged
                continue
            eid, flat = entry
            fields: Fields = dict(zip(flat[::2], flat[1::2], strict=True))
            claimed.extend(self._deliveries([(eid, fields)], redelivered=True))
        for owner, alive in verdicts.items():
            if not alive:
                await self._drop_consumer_if_idle(owner)
        return claimed

    async def _started(self, entry_id: bytes) -> bool:
        """Whether the request of a pending entry has its reply under way."""
        entries: Any = await self.redis.xrange(self.key, entry_id, entry_id)
        if not entries:
            return False
        rid = entries[0][1].get(b"rid")
        return rid is not None and await self.state(rid.decode()) == "started"

    async def orphans(self, consumer: str, held: set[bytes], min_idle_ms: int, count: int) -> list[Delivery]:
        """Entries still pending for `consumer` itself that it no longer works on (not in `held`): their task ended
        without acknowledging them, as when Redis was unreachable at the end. Idle at least `min_idle_ms`, so one
        just read and not yet handed to a task is left alone."""
        if count <= 0:
            return []
        items: Any = await self.redis.xpending_range(
            self.key, keys.GROUP, min="-", max="+", count=count, consumername=consumer, idle=min_idle_ms
        )
        ids = [bytes(item["message_id"]) for item in items if bytes(item["message_id"]) not in held]
        if not ids:
            return []
        # Claiming resets the idle time, so the next pass does not pick them up again while they are served.
        claimed: Any = await self.redis.xclaim(self.key, keys.GROUP, consumer, min_idle_ms, list[Any](ids))
        out: list[Delivery] = []
        for eid, fields in claimed:
            if fields:
                out.extend(self._deliveries([(eid, fields)], redelivered=True))
        found = {bytes(eid) for eid, fields in claimed if fields}
        gone = [eid for eid in ids if eid not in found]
        if gone:  # deleted while pending (cancelled while queued): nothing left to serve
            await self.redis.xack(self.key, keys.GROUP, *gone)
        return out

    async def _pending(self, page: int = 100, max_pages: int = 50) -> AsyncIterator[Any]:
        """Pending entries, oldest first, page by page (live consumers may hold many ahead of a dead one)."""
        start = "-"
        for _ in range(max_pages):
            items: Any = await self.redis.xpending_range(self.key, keys.GROUP, min=start, max="+", count=page)
            for item in items:
                yield item
            if len(items) < page:
                return
            start = "(" + _text(items[-1]["message_id"])  # type: ignore[operator]

    async def _drop_consumer_if_idle(self, owner: str) -> None:
        consumers: Any = await self.redis.xinfo_consumers(self.key, keys.GROUP)
        for info in consumers:
            if _text(info["name"]) == owner and int(info["pending"]) == 0:
                await self.redis.xgroup_delconsumer(self.key, keys.GROUP, owner)

    @staticmethod
    def _deliveries(entries: list[tuple[bytes, Fields]], redelivered: bool) -> list[Delivery]:
        return [Delivery(eid, Envelope.from_fields(fields), redelivered) for eid, fields in entries]
