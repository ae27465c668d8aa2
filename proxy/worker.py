"""The sidecar's work: pull requests from the deployment queue, forward them, stream reply frames back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import aiohttp
import structlog
from redis.exceptions import RedisError

from proxy.chunks import ChunkWriter
from proxy.chunks import ReplyGone as _ReplyGone
from proxy.drain import settle
from tiffin.common.backoff import Backoff, is_nogroup
from tiffin.common.probe import wait_until_ok
from tiffin.contracts.config import Deployment
from tiffin.contracts.frames import (
    CHUNK_MAX_BYTES,
    NOT_SERVED_HEADER,
    QUEUE_MS_HEADER,
    REPLY_HEADERS,
    WAIT_DEADLINE_HEADER,
    Envelope,
    Frame,
)
from tiffin.contracts.queue import Delivery, DeploymentQueue, StartOutcome, now_ms
from tiffin.contracts.registry import Registry

log = structlog.get_logger("proxy")

_READ_BLOCK_MS = 1000
_CONNECT_RETRIES = 3
_UPSTREAM_RECHECK_S = 0.5
_OUTAGE_ATTEMPTS = 3  # a request is served again after at most this many Redis outages during its handling


class _NotServed(Exception):
    """The API server did not take the request (unreachable, or shutting down): another replica should."""


class _Dropped(Exception):
    """The API server's connection dropped before its reply's head: it died, and the runner was never answered
    through it (an answer a runner did give is in the saved result), so another replica serves the request."""


class _Lost(Exception):
    """The request is no longer this proxy's to answer (cancelled, or reclaimed by a replica that thought this
    one dead): stop, and write nothing."""


_WHOLE_MAX_BYTES = 8 * 1024 * 1024
"""A non-streamed answer up to this size is written to the reply stream and acknowledged in one step; a larger
one is streamed as it comes (head first), like a streamed answer."""

_REDIS_RIDE_OUT_S = 30.0
"""How long a proxy holding a runner's answer keeps trying to write it while Redis is unreachable (a restart)."""


async def _riding_out_redis(call: Callable[[], Awaitable[StartOutcome]]) -> StartOutcome:
    """`call()`, tried again with back-off while Redis is unreachable, for up to `_REDIS_RIDE_OUT_S`. Only for
    calls that are safe to repeat after an unknown outcome (`start` and `answer` are: their owner is told
    'started' again, and nothing is written twice)."""
    deadline = time.monotonic() + _REDIS_RIDE_OUT_S
    pause = 0.2
    while True:
        try:
            return await call()
        except (RedisError, OSError) as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("redis_unreachable_retrying", error=str(exc) or repr(exc))
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)


_ORPHAN_IDLE_S = 5.0
"""An entry pending for this proxy that no task of its serves (its task ended without acknowledging it, as when
Redis was unreachable) is served again once idle this long."""

_SETTLE_S = 5.0
"""Past the drain timeout, how long settling the requests still held may take (a few Redis round trips each);
one still unsettled then (Redis unreachable) stays pending, and is served again once this replica's heartbeat
lapses."""

_MAX_DROPS = 3
"""API servers a request may see die under it before any reply byte; past that it is likely the request's own
doing (a poison request) and it is answered 502 instead of being offered to yet another replica."""


class Proxy:
    """Drains one deployment's queue into one API server, at most `api.concurrency` requests at once."""

    def __init__(
        self,
        deployment: Deployment,
        queue: DeploymentQueue,
        registry: Registry,
        session: aiohttp.ClientSession,
        replica_id: str,
        upstream_url: str,
        cancel_poll_s: float = 1.0,
    ) -> None:
        self.deployment = deployment
        self.queue = queue
        self.registry = registry
        self.session = session
        self.replica_id = replica_id
        self.upstream_url = upstream_url
        self.cancel_poll_s = cancel_poll_s
        self._calls: dict[str, asyncio.Task[Any]] = {}  # request id -> its upstream call, while it runs
        self._checks: set[asyncio.Task[None]] = set()
        self.concurrency = deployment.api.concurrency
        self.stopping = asyncio.Event()
        self._giving_up = False  # the drain timed out: held requests are settled, not served
        self._active: set[asyncio.Task[None]] = set()
        self._held: set[bytes] = set()  # entry ids a task of this proxy is serving
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._upstream_ok = asyncio.Event()
        self._upstream_ok.set()

    @property
    def busy(self) -> int:
        return len(self._active)

    async def consume(self) -> None:
        """Read new entries while there is capacity, until `stopping` is set; through a Redis outage too."""
        retry = Backoff("proxy_queue_read")
        while not self.stopping.is_set():
            await self._capacity.wait()
            if not self._upstream_ok.is_set():
                await self._until_upstream_healthy()
                continue
            free = self.concurrency - self.busy
            if free <= 0:  # reclaimed streams' error frames may briefly run beyond the concurrency
                self._capacity.clear()
                continue
            try:
                deliveries = await self.queue.read(self.replica_id, count=free, block_ms=_READ_BLOCK_MS)
            except (RedisError, OSError) as exc:
                await retry.failed(exc, self.stopping)
                if is_nogroup(exc):
                    # Redis came back without the queue (its data lost): make the stream and its group again.
                    with contextlib.suppress(RedisError, OSError):
                        await self.queue.ensure_group()
                continue
            retry.succeeded()
            for delivery in deliveries:
                self._spawn(delivery)

    async def _until_upstream_healthy(self) -> None:
        """After the API server turned work away: read nothing more until it takes requests again."""
        if await wait_until_ok(self.session, self.upstream_url + "/health", self.stopping, poll_s=_UPSTREAM_RECHECK_S):
            log.info("upstream_healthy_again", upstream=self.upstream_url)
            self._upstream_ok.set()

    async def cancel_loop(self, stop: asyncio.Event) -> None:
        """Until `stop`: stop a request's upstream call as soon as its interceptor publishes its cancellation, and
        every `cancel_poll_s` check every call's request state, all in one round trip, for a push that was missed."""
        await asyncio.gather(self.queue.cancellations(stop, self._on_cancel), self._poll_cancellations(stop))

    def _on_cancel(self, request_id: str) -> None:
        if request_id in self._calls:
            check = asyncio.create_task(self._stop_if_cancelled([request_id]))
            self._checks.add(check)
            check.add_done_callback(self._checks.discard)

    async def _poll_cancellations(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cancel_poll_s)
            if self._calls:
                await self._stop_if_cancelled(list(self._calls))

    async def _stop_if_cancelled(self, request_ids: list[str]) -> None:
        """Abort the upstream calls of those requests whose client has gone (state 'cancelled', or expired)."""
        try:
            states = await self.queue.states(request_ids)
        except (RedisError, OSError):
            return  # Redis away: keep forwarding; the reply's own writes find out if it stays away
        for rid, state in zip(request_ids, states, strict=True):
            call = self._calls.get(rid)
            if call is not None and state not in ("taken", "started"):
                call.cancel()

    async def reclaim_loop(self, interval_s: float) -> None:
        """Serve requests held by replicas that died (their heartbeat lapsed) before answering."""
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), interval_s)
            if self.stopping.is_set():
                return
            try:
                free = self.concurrency - self.busy
                for delivery in await self.queue.reclaim(self.replica_id, self.registry.is_alive, free):
                    log.info("reclaimed", request_id=delivery.envelope.request_id)
                    self._spawn(delivery)
                free = self.concurrency - self.busy
                idle_ms = int(_ORPHAN_IDLE_S * 1000)
                for delivery in await self.queue.orphans(self.replica_id, self._held, idle_ms, free):
                    log.info("reclaimed_own", request_id=delivery.envelope.request_id)
                    self._spawn(delivery)
            except Exception as exc:  # reclaiming is best effort; the next round retries
                log.warning("reclaim_failed", error=str(exc))

    async def drain(self, timeout_s: float) -> None:
        """Let in-flight requests finish; past the timeout, stop their upstream calls and settle each by its state
        (`proxy.drain.settle`): one whose reply had not started goes back to the queue at once for another replica,
        one under way ends with a `replica_failed` error frame."""
        if not self._active:
            return
        log.info("draining", in_flight=self.busy)
        _done, pending = await asyncio.wait(self._active, timeout=timeout_s)
        if not pending:
            return
        self._giving_up = True
        log.warning("drain_timeout", in_flight=len(pending), timeout_s=timeout_s)
        for call in self._calls.values():
            call.cancel()
        _done, stuck = await asyncio.wait(pending, timeout=_SETTLE_S)
        for task in stuck:
            task.cancel()  # unacknowledged, so served again once this replica's heartbeat lapses
        if stuck:
            log.error("drain_unsettled", requests=len(stuck))
            await asyncio.wait(stuck)

    def _spawn(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._handle_through_outage(delivery), name=f"req-{delivery.envelope.request_id}")
        self._active.add(task)
        self._held.add(delivery.entry_id)
        task.add_done_callback(lambda _task: self._held.discard(delivery.entry_id))
        if self.busy >= self.concurrency:
            self._capacity.clear()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._active.discard(task)
        if self.busy < self.concurrency:
            self._capacity.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("request_task_failed", error=repr(task.exception()))

    async def _handle_through_outage(self, delivery: Delivery) -> None:
        """Serve a delivery; if Redis goes away meanwhile, settle it by its state once Redis is back.

        Not yet started (queued or taken): served again from the top (the runner may then run it a second
        time, if its first answer was lost with Redis). Started: bytes may have reached the client, so its
        reply ends with an error event. Anything else (cancelled, answered): only acknowledged.
        """
        rid = delivery.envelope.request_id
        for _attempt in range(_OUTAGE_ATTEMPTS):
            try:
                await self._handle(delivery)
                return
            except (RedisError, OSError) as exc:
                log.warning("redis_lost_mid_request", request_id=rid, error=str(exc) or type(exc).__name__)
            try:
                state = await self._state_once_back(rid)
                if state in ("queued", "taken"):
                    continue
                if state == "started":
                    owner = await self.queue.owner(rid) or self.replica_id
                    message = "the reply was cut short while tiffin's Redis restarted"
                    frame = Frame.fail(rid, owner, 502, message, "replica_failed")
                    await self.queue.send(delivery.envelope.reply_to, frame)
                await self.queue.finish(delivery.entry_id)
                return
            except (RedisError, OSError):
                continue  # gone again: the next attempt finds out where the request stands
        log.error("request_abandoned_after_outages", request_id=rid)

    async def _state_once_back(self, rid: str) -> str | None:
        """The request's state as soon as Redis answers again (waits with back-off, as long as it takes)."""
        retry = Backoff("proxy_request_state")
        while True:
            try:
                state = await self.queue.state(rid)
                retry.succeeded()
                return state
            except (RedisError, OSError) as exc:
                await retry.failed(exc)

    async def _handle(self, delivery: Delivery) -> None:
        envelope = delivery.envelope
        rid = envelope.request_id
        state = await self.queue.take(rid, self.replica_id, envelope.reply_to)
        if state == "started":
            # Another replica began this reply and died: bytes may have reached the client, so no replay.
            # The error is signed with the dead owner's id: the interceptor follows that replica's frames only.
            owner = await self.queue.owner(rid) or self.replica_id
            message = "the replica serving this request failed mid-reply"
            await self.queue.send(envelope.reply_to, Frame.fail(rid, owner, 502, message, "replica_failed"))
            await self.queue.finish(delivery.entry_id)
            log.warning("abandoned_mid_reply", request_id=rid)
            return
        if state == "done":
            await self._answer_saved(delivery)
            return
        if state == "orphaned":
            # Its interceptor died while it waited: no client is left, so no runner should spend time on it.
            await self.queue.cancel(rid, delivery.entry_id, even_if_taken=True)
            await self.queue.finish(delivery.entry_id)
            log.warning("orphaned", request_id=rid, reply_to=envelope.reply_to)
            return
        if state != "taken":
            await self.queue.finish(delivery.entry_id)
            log.info("skipped", request_id=rid, state=state)
            return
        if self._giving_up:  # taken just as the drain gave up: never forwarded, so back to the queue
            log.warning("drain_gave_up", request_id=rid, settled=await settle(self.queue, delivery, self.replica_id))
            return
        queue_ms = now_ms() - envelope.enqueued_ms
        started = time.monotonic()
        stream = asyncio.create_task(self._forward(delivery, queue_ms))
        self._calls[rid] = stream
        try:
            # The call is cancelled by `cancel_loop` if the client goes away, or by `drain` past its timeout.
            await asyncio.wait({stream})
        except asyncio.CancelledError:
            stream.cancel()  # this task stopped from outside: its call stops too; the entry stays unacknowledged
            raise
        finally:
            self._calls.pop(rid, None)
        if stream.cancelled():
            settled = await settle(self.queue, delivery, self.replica_id)
            if self._giving_up:
                log.warning("drain_gave_up", request_id=rid, settled=settled)
                return
            ending = None
        else:
            ending = None if stream.exception() else stream.result()
            if ending == "forwarded" or ending is None:
                await self.queue.finish(delivery.entry_id, rid)  # answered or failed: its saved result can go too
            # "answered": the answer script acknowledged it and dropped its saved result in the same step
            elif ending == "lost" and await self.queue.owner(rid) == self.replica_id:
                await self.queue.finish(delivery.entry_id)  # cancelled; a new owner acknowledges its entry itself
            # "released": the release script acknowledged it, and a saved result must stay for the next taker
        if ending in ("released", "lost"):
            return  # logged as such; another replica serves it
        log.info(
            "forwarded",
            request_id=rid,
            redelivered=delivery.redelivered,
            queue_ms=queue_ms,
            upstream_ms=round((time.monotonic() - started) * 1000, 1),
            cancelled=stream.cancelled(),
        )

    async def _forward(self, delivery: Delivery, queue_ms: int) -> Literal["forwarded", "answered", "released", "lost"]:
        envelope = delivery.envelope
        rid = envelope.request_id
        if not self._upstream_ok.is_set():
            # Read in the same breath as a hand-back: no point offering it to an API server that turns work away.
            await self._hand_back(delivery, "upstream not taking requests")
            return "released"
        headers = {**envelope.headers, WAIT_DEADLINE_HEADER: str(envelope.wait_deadline_ms)}
        timeout = aiohttp.ClientTimeout(sock_connect=10, sock_read=envelope.upstream_timeout_s)
        head_sent = False
        try:
            for attempt in range(_CONNECT_RETRIES):
                try:
                    async with self.session.post(
                        self.upstream_url + envelope.path, data=envelope.body, headers=headers, timeout=timeout
                    ) as resp:
                        if resp.status == 503 and NOT_SERVED_HEADER in resp.headers:
                            raise _NotServed(resp.headers[NOT_SERVED_HEADER])
                        reply_headers = {k: resp.headers[k] for k in REPLY_HEADERS if k in resp.headers}
                        reply_headers[QUEUE_MS_HEADER] = str(queue_ms)
                        head = Frame.head(rid, self.replica_id, resp.status, reply_headers)
                        chunks = resp.content.iter_chunked(CHUNK_MAX_BYTES).__aiter__()  # what is there, capped
                        first: list[bytes] = []
                        if resp.content_type != "text/event-stream":
                            first = await self._read_whole(chunks)
                            if sum(map(len, first)) <= _WHOLE_MAX_BYTES:
                                frames = [head, *(Frame.chunk(rid, self.replica_id, d, n + 1)
                                                  for n, d in enumerate(first))]  # fmt: skip
                                await self._answer(delivery, [*frames, Frame.end(rid, self.replica_id)])
                                return "answered"
                        await self._start(envelope, head)
                        head_sent = True
                        await self._relay_chunks(envelope, first, chunks)  # ReplyGone: leaving stops the upstream call
                        await self.queue.end(delivery, Frame.end(rid, self.replica_id))
                        return "answered"  # the end frame and the acknowledgement went together
                except aiohttp.ClientConnectorError as exc:
                    # Nothing reached the API server: safe to try again shortly, or to leave to another replica.
                    if attempt == _CONNECT_RETRIES - 1:
                        raise _NotServed(f"unreachable: {exc}") from exc  # logged only, never sent to a client
                    await asyncio.sleep(0.5 * (attempt + 1))
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError) as exc:
                    if head_sent:
                        raise
                    raise _Dropped(repr(exc)) from exc
        except _NotServed as exc:
            await self._hand_back(delivery, str(exc))
            return "released"
        except _Dropped as exc:
            # The API server died holding the request: its runner call was cut with it, and an answer the runner
            # had already given was saved before the API server replied, so the next taker answers from that.
            drops = await self.queue.count_drop(rid)
            if drops >= _MAX_DROPS:
                log.warning("upstream_failed", request_id=rid, head_sent=False, drops=drops, error=str(exc))
                await self._fail(envelope.reply_to, rid, 502, "the API server failed", "upstream_failed")
                return "forwarded"
            await self._hand_back(delivery, f"API server lost before its reply: {exc}")
            return "released"
        except _ReplyGone:
            log.warning("orphaned_mid_reply", request_id=rid, reply_to=envelope.reply_to)
        except _Lost:
            log.warning("lost_ownership", request_id=rid)  # its new owner answers; leaving stops the upstream call
            return "lost"
        except TimeoutError:
            await self._fail(envelope.reply_to, rid, 504, "the API server did not answer in time", "upstream_timeout")
        except aiohttp.ClientError as exc:
            code = "upstream_failed_mid_reply" if head_sent else "upstream_failed"
            # The detail (addresses, ports, exception text) goes to this log only; the client gets a plain message.
            log.warning("upstream_failed", request_id=rid, head_sent=head_sent, error=repr(exc))
            await self._fail(envelope.reply_to, rid, 502, "the API server failed", code)
        return "forwarded"

    async def _relay_chunks(self, envelope: Envelope, first: list[bytes], chunks: AsyncIterator[bytes]) -> None:
        """Every piece of the body as chunk frames, in order; what was read before an upstream failure goes out
        before it is reported."""
        writer = ChunkWriter(self.queue, envelope.reply_to, envelope.request_id, self.replica_id)
        try:
            try:
                for data in first:
                    await writer.put(data)
                async for data in chunks:
                    await writer.put(data)
            except (aiohttp.ClientError, TimeoutError):
                await writer.flush()
                raise
            await writer.flush()
        finally:
            writer.abort()  # nothing left after a flush; a write still in flight when cut short is stopped

    @staticmethod
    async def _read_whole(chunks: AsyncIterator[bytes]) -> list[bytes]:
        """A non-streamed answer's chunks, up to just past `_WHOLE_MAX_BYTES` (the rest stays to be streamed)."""
        out: list[bytes] = []
        size = 0
        async for data in chunks:
            out.append(data)
            size += len(data)
            if size > _WHOLE_MAX_BYTES:
                break
        return out

    async def _start(self, envelope: Envelope, head: Frame) -> None:
        """Write the head frame if the request is still ours and its interceptor still listens."""
        self._check(await _riding_out_redis(lambda: self.queue.start(envelope, head)))

    async def _answer(self, delivery: Delivery, frames: list[Frame]) -> None:
        """Write a whole answer and acknowledge it in one step (retried while Redis is briefly unreachable: a runner
        answered, and losing that answer now would mean running the request again)."""
        self._check(await _riding_out_redis(lambda: self.queue.answer(delivery, frames)))

    @staticmethod
    def _check(outcome: StartOutcome) -> None:
        if outcome == "gone":
            raise _ReplyGone
        if outcome == "lost":
            raise _Lost

    async def _answer_saved(self, delivery: Delivery) -> None:
        """A runner answered this request already (its first taker died before relaying it): relay that answer,
        so the request does not run twice."""
        envelope = delivery.envelope
        rid = envelope.request_id
        saved = await self.queue.saved_result(rid)
        if saved is None:  # expired between take and read: too old to matter to anyone still waiting
            await self._fail(envelope.reply_to, rid, 502, "the replica serving this request failed", "replica_failed")
            await self.queue.finish(delivery.entry_id, rid)
            return
        try:
            headers = {**saved.headers, QUEUE_MS_HEADER: str(now_ms() - envelope.enqueued_ms)}
            frames = [Frame.head(rid, self.replica_id, saved.status, headers)]
            for n, offset in enumerate(range(0, len(saved.body), CHUNK_MAX_BYTES)):
                frames.append(Frame.chunk(rid, self.replica_id, saved.body[offset : offset + CHUNK_MAX_BYTES], n + 1))
            await self._answer(delivery, [*frames, Frame.end(rid, self.replica_id)])
            log.info("answered_from_saved_result", request_id=rid, status=saved.status)
        except _ReplyGone:
            log.warning("saved_result_not_relayed", request_id=rid, reason="interceptor gone")
        except _Lost:
            log.warning("saved_result_not_relayed", request_id=rid, reason="no longer ours")
            if await self.queue.owner(rid) != self.replica_id:
                return  # a new owner answers it from the same record
        await self.queue.finish(delivery.entry_id, rid)

    async def _hand_back(self, delivery: Delivery, reason: str) -> None:
        """Back in the queue for another replica (its client keeps waiting, within its wait deadline); this proxy
        takes nothing more until its API server is healthy again."""
        self._upstream_ok.clear()
        requeued = await self.queue.release(delivery, self.replica_id)
        log.warning("released", request_id=delivery.envelope.request_id, reason=reason, requeued=requeued is not None)

    async def _fail(self, reply_to: str, rid: str, status: int, message: str, code: str) -> None:
        log.warning("upstream_error", request_id=rid, status=status, code=code, error=message)
        await self.queue.send(reply_to, Frame.fail(rid, self.replica_id, status, message, code))
