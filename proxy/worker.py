"""The sidecar's work: pull requests from the deployment queue, forward them, stream reply frames back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Literal

import aiohttp
import structlog
from redis.exceptions import RedisError

from tiffin.backoff import Backoff, is_nogroup
from tiffin.config import Deployment
from tiffin.frames import (
    CHUNK_MAX_BYTES,
    NOT_SERVED_HEADER,
    QUEUE_MS_HEADER,
    REPLY_HEADERS,
    WAIT_DEADLINE_HEADER,
    Frame,
)
from tiffin.probe import wait_until_ok
from tiffin.queue import Delivery, DeploymentQueue, now_ms
from tiffin.registry import Registry

log = structlog.get_logger("proxy")

_READ_BLOCK_MS = 1000
_CONNECT_RETRIES = 3
_UPSTREAM_RECHECK_S = 0.5
_OUTAGE_ATTEMPTS = 3  # a request is served again after at most this many Redis outages during its handling


class _ReplyGone(Exception):
    """The interceptor that accepted the request died: nobody can read the rest of the reply."""


class _NotServed(Exception):
    """The API server did not take the request (unreachable, or shutting down): another replica should."""


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
        self._cancelled: dict[str, asyncio.Event] = {}
        self.concurrency = deployment.api.concurrency
        self.stopping = asyncio.Event()
        self._active: set[asyncio.Task[None]] = set()
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
        """Until `stop`: stop a request's upstream call as soon as its interceptor publishes its cancellation."""
        await self.queue.cancellations(stop, self._on_cancel)

    def _on_cancel(self, request_id: str) -> None:
        event = self._cancelled.get(request_id)
        if event is not None:
            event.set()

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
            except Exception as exc:  # reclaiming is best effort; the next round retries
                log.warning("reclaim_failed", error=str(exc))

    async def drain(self, timeout_s: float) -> None:
        """Let in-flight requests finish; past the timeout, leave them pending for another replica."""
        if self._active:
            log.info("draining", in_flight=self.busy)
            _done, pending = await asyncio.wait(self._active, timeout=timeout_s)
            for task in pending:
                task.cancel()

    def _spawn(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._handle_through_outage(delivery), name=f"req-{delivery.envelope.request_id}")
        self._active.add(task)
        if self.busy >= self.concurrency:
            self._capacity.clear()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._active.discard(task)
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
        state = await self.queue.take(rid, self.replica_id)
        if state == "started":
            # Another replica began this reply and died: bytes may have reached the client, so no replay.
            # The error is signed with the dead owner's id: the interceptor follows that replica's frames only.
            owner = await self.queue.owner(rid) or self.replica_id
            message = "the replica serving this request failed mid-reply"
            await self.queue.send(envelope.reply_to, Frame.fail(rid, owner, 502, message, "replica_failed"))
            await self.queue.finish(delivery.entry_id)
            log.warning("abandoned_mid_reply", request_id=rid)
            return
        if state != "taken":
            await self.queue.finish(delivery.entry_id)
            log.info("skipped", request_id=rid, state=state)
            return
        if not await self.queue.reply_open(envelope.reply_to):
            # Its interceptor died while it waited: no client is left, so no runner should spend time on it.
            await self.queue.cancel(rid, delivery.entry_id, even_if_taken=True)
            await self.queue.finish(delivery.entry_id)
            log.warning("orphaned", request_id=rid, reply_to=envelope.reply_to)
            return
        queue_ms = now_ms() - envelope.enqueued_ms
        started = time.monotonic()
        stream = asyncio.create_task(self._forward(delivery, queue_ms))
        self._cancelled[rid] = asyncio.Event()
        try:
            await self._watch_cancellation(rid, stream)
        finally:
            self._cancelled.pop(rid, None)
            await self.queue.finish(delivery.entry_id)
        if not stream.cancelled() and stream.result() == "released":
            return  # logged as such; another replica serves it
        log.info(
            "forwarded",
            request_id=rid,
            redelivered=delivery.redelivered,
            queue_ms=queue_ms,
            upstream_ms=round((time.monotonic() - started) * 1000, 1),
            cancelled=stream.cancelled(),
        )

    async def _watch_cancellation(self, rid: str, stream: asyncio.Task[Any]) -> None:
        """Abort the upstream call if the client has gone away (its state says 'cancelled' or has expired).

        Woken at once by a pushed cancellation; the poll every `cancel_poll_s` catches a push that was missed.
        """
        pushed = self._cancelled[rid]
        while True:
            signal = asyncio.create_task(pushed.wait())
            done, _ = await asyncio.wait(
                {stream, signal}, timeout=self.cancel_poll_s, return_when=asyncio.FIRST_COMPLETED
            )
            signal.cancel()
            pushed.clear()
            if stream in done:
                return
            try:
                state = await self.queue.state(rid)
            except (RedisError, OSError):
                continue  # Redis away: keep forwarding; the reply's own writes find out if it stays away
            if state not in ("taken", "started"):
                stream.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stream
                return

    async def _forward(self, delivery: Delivery, queue_ms: int) -> Literal["forwarded", "released"]:
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
                        if not await self.queue.start(envelope, head):
                            raise _ReplyGone
                        head_sent = True
                        async for data in resp.content.iter_chunked(CHUNK_MAX_BYTES):  # what is there, capped
                            if not await self.queue.send(envelope.reply_to, Frame.chunk(rid, self.replica_id, data)):
                                raise _ReplyGone  # leaving the block closes the upstream call: its work stops
                        await self.queue.send(envelope.reply_to, Frame.end(rid, self.replica_id))
                        return "forwarded"
                except aiohttp.ClientConnectorError as exc:
                    # Nothing reached the API server: safe to try again shortly, or to leave to another replica.
                    if attempt == _CONNECT_RETRIES - 1:
                        raise _NotServed(f"unreachable: {exc}") from exc  # logged only, never sent to a client
                    await asyncio.sleep(0.5 * (attempt + 1))
        except _NotServed as exc:
            await self._hand_back(delivery, str(exc))
            return "released"
        except _ReplyGone:
            log.warning("orphaned_mid_reply", request_id=rid, reply_to=envelope.reply_to)
        except TimeoutError:
            await self._fail(envelope.reply_to, rid, 504, "the API server did not answer in time", "upstream_timeout")
        except aiohttp.ClientError as exc:
            code = "upstream_failed_mid_reply" if head_sent else "upstream_failed"
            # The detail (addresses, ports, exception text) goes to this log only; the client gets a plain message.
            log.warning("upstream_failed", request_id=rid, head_sent=head_sent, error=repr(exc))
            await self._fail(envelope.reply_to, rid, 502, "the API server failed", code)
        return "forwarded"

    async def _hand_back(self, delivery: Delivery, reason: str) -> None:
        """Back in the queue for another replica (its client keeps waiting, within its wait deadline); this proxy
        takes nothing more until its API server is healthy again."""
        self._upstream_ok.clear()
        requeued = await self.queue.release(delivery, self.replica_id)
        log.warning("released", request_id=delivery.envelope.request_id, reason=reason, requeued=requeued is not None)

    async def _fail(self, reply_to: str, rid: str, status: int, message: str, code: str) -> None:
        log.warning("upstream_error", request_id=rid, status=status, code=code, error=message)
        await self.queue.send(reply_to, Frame.fail(rid, self.replica_id, status, message, code))
