"""A request's life at the edge: validate, enqueue, wait for a replica's head frame, hand the reply to
`respond`, and leave nothing behind in Redis however it ended."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import TypeVar

import structlog
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from interceptor import metrics
from interceptor.auth import KeyGate
from interceptor.body import parse_json_object, read_body
from interceptor.config import EdgeSettings
from interceptor.memory import give_back_soon
from interceptor.middleware import client_of, request_id
from interceptor.outcome import Outcome, observe_cold_start, report
from interceptor.replies import Inbox, ReplyReader
from interceptor.respond import ReplyWriter, SlowReader
from interceptor.routing import Router
from interceptor.withdrawals import PendingWithdrawals
from tiffin.contracts import keys
from tiffin.contracts.apps import parse_app_path
from tiffin.contracts.coldstart import end_wake
from tiffin.contracts.config import Deployment
from tiffin.contracts.errors import error_response
from tiffin.contracts.exceptions import (
    BackendUnavailable,
    BadRequest,
    Draining,
    PayloadTooLarge,
    ReplicaError,
    RequestError,
    RequestTimeout,
    UpstreamTimeout,
    WaitTimeout,
)
from tiffin.contracts.frames import (
    FORWARDED_HEADERS,
    QUEUE_MS_HEADER,
    Envelope,
    Frame,
    FrameKind,
)
from tiffin.contracts.history import TrafficRecorder
from tiffin.contracts.keylimits import Slot
from tiffin.contracts.queue import Admission, DeploymentQueue, now_ms, redis_clock_offset_ms

log = structlog.get_logger("interceptor")

T = TypeVar("T")

# Refusals of client input, by error code -> the `reason` they are counted under in tiffin_rejected_total.
_REFUSALS = {
    "unsupported_content_encoding": "unsupported_encoding",
    "request_too_large": "body_too_large",
    "body_timeout": "body_timeout",
    "bad_encoding": "bad_encoding",
    "bad_body": "bad_request",
    "invalid_json": "bad_json",
}


class Relay:
    """Serves the completion endpoints for every deployment of this interceptor."""

    def __init__(
        self,
        redis: Redis,
        router: Router,
        reader: ReplyReader,
        reply_gap_grace_s: float,
        gate: KeyGate | None = None,
        edge: EdgeSettings | None = None,
    ) -> None:
        self.redis = redis
        self.edge = edge or EdgeSettings()
        self.router = router
        self.reader = reader
        # Without a gate that loads keys, deployments that require one refuse every request (fail closed).
        self.gate = gate or KeyGate(redis)
        self.reply_gap_grace_s = reply_gap_grace_s
        self.writer = ReplyWriter(self.edge.write_timeout_s, reply_gap_grace_s)
        self.queues = {d.name: DeploymentQueue(redis, d.name) for d in router.deployments}
        self.draining = False
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._max_body = max((d.limits.max_body_bytes for d in router.deployments), default=1_048_576)
        self.withdrawals = PendingWithdrawals(self.edge.redis_timeout_s)
        self.redis_clock_offset_ms = 0
        """How far Redis's clock is ahead of this host's (measured at start by `ensure_queues`)."""
        self.backend_down = False
        """The last Redis step of a request failed (cleared by the next one that succeeds)."""
        self._cleanups: set[asyncio.Task[None]] = set()
        self.history = TrafficRecorder(d.name for d in router.deployments)
        """Requests per step for the dashboard, flushed to Redis by the interceptor's history task."""

    async def ensure_queues(self) -> None:
        """Create the queues' consumer groups, and learn Redis's clock (an admit's deadline is set by it)."""
        for queue in self.queues.values():
            await queue.ensure_group()
        self.redis_clock_offset_ms = await redis_clock_offset_ms(self.redis)
        if abs(self.redis_clock_offset_ms) > 1000:
            log.warning("redis_clock_skew", offset_ms=self.redis_clock_offset_ms)

    async def completion(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions, /v1/completions and /v1/apps/{deployment}/{endpoint} (behind any prefix)."""
        outcome = Outcome(request_id=request_id(request), client=client_of(request).client)
        self.in_flight += 1
        self.idle.clear()
        try:
            return await self._serve(request, outcome)
        except RequestError as exc:
            outcome.status = exc.status
            outcome.detail = exc.code
            response = error_response(exc, outcome.request_id)
            reason = _REFUSALS.get(exc.code or "")
            if reason is not None:
                metrics.REJECTED.labels(outcome.deployment, reason).inc()
            if isinstance(exc, RequestTimeout):
                response.force_close()  # the rest of a body this slow is not worth waiting for
            return response
        except (asyncio.CancelledError, ConnectionError):
            # Cancelled while its body arrived or it waited, or its connection failed under a write.
            if not (outcome.delivered or outcome.sent) and outcome.status != 499:
                outcome.status, outcome.detail = _ended_early(request)
            raise
        except Exception:
            outcome.status, outcome.detail = 500, "internal_error"  # a bug: the middleware answers and logs it
            raise
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()
            report(outcome, self.history)

    async def _serve(self, request: web.Request, outcome: Outcome) -> web.StreamResponse:
        if self.draining:
            raise Draining("this interceptor is shutting down; retry")
        route = self.router.match(request.host, request.path)
        caller = self.gate.identify(request.headers.get("Authorization"))
        outcome.key_id = caller.key_id
        route = self.gate.admit_route(route, caller, request.path)  # before reading a body it would refuse
        body = await read_body(request, self._max_body, self.edge.body_timeout_s)
        payload = parse_json_object(body)
        app_path = parse_app_path(route.api_path)
        if app_path is not None:  # an application's endpoint: the URL names the deployment, the body is its own
            deployment = self.gate.resolve_app(route, app_path.deployment, caller)
        else:
            model = payload.get("model")
            if model is not None and not isinstance(model, str):
                raise BadRequest("'model' must be a string")
            deployment = self.gate.resolve(route, model, caller)
        outcome.deployment = deployment.name
        if len(body) > deployment.limits.max_body_bytes:
            raise PayloadTooLarge(f"request body exceeds {deployment.limits.max_body_bytes} bytes")
        queue = self.queues[deployment.name]
        enqueued = now_ms()
        outcome.enqueued = time.monotonic()
        headers = {k: request.headers[k] for k in FORWARDED_HEADERS if k in request.headers}
        headers.update(client_of(request).headers)
        headers["x-request-id"] = outcome.request_id
        envelope = Envelope(
            request_id=outcome.request_id,
            reply_to=self.reader.key,
            path=route.api_path,
            body=body,
            headers=headers,
            enqueued_ms=enqueued,
            wait_deadline_ms=enqueued + int(deployment.limits.wait_timeout_s * 1000),
            upstream_timeout_s=deployment.limits.upstream_timeout_s,
        )
        try:  # 429 over the key's limits
            slot = await self._backend(self.gate.acquire(deployment, caller, outcome.request_id), deployment.name)
        except BackendUnavailable:
            metrics.REJECTED.labels(deployment.name, "backend_unavailable").inc()
            raise
        metrics.child(metrics.IN_PROGRESS, deployment.name).inc()
        inbox = self.reader.subscribe(outcome.request_id, self.edge.reply_buffer_bytes)
        entry_id: bytes | None = None
        wake_open = False  # this request started a cold start that is not recorded yet
        withdrawn = False
        backend_failed = False
        try:
            try:
                admission = await self._backend(
                    queue.admit(
                        envelope,
                        deployment.limits.max_queue,
                        _state_ttl_s(deployment),
                        wake_ttl_s=deployment.limits.wait_timeout_s,
                        accept_within_s=self.edge.redis_timeout_s,
                        redis_clock_offset_ms=self.redis_clock_offset_ms,
                    ),
                    deployment.name,
                )
            except BackendUnavailable:
                metrics.REJECTED.labels(deployment.name, "backend_unavailable").inc()
                # The script may have run before the reply was lost: make sure nothing is served to nobody.
                withdrawn = backend_failed = True
                self.withdrawals.add(queue, outcome.request_id, None, _state_ttl_s(deployment))
                raise
            entry_id, wake_open = admission.entry_id, admission.woke
            head = await self._await_head(inbox, deployment, queue, envelope, entry_id)
            outcome.status = head.status
            queue_ms = head.headers.get(QUEUE_MS_HEADER)
            outcome.queue_ms = float(queue_ms) if queue_ms else None
            if admission.cold:
                wake_open = False
                await self._cold_head(admission, deployment, envelope, head, outcome)
            return await self.writer.relay(request, inbox, head, deployment, outcome)
        except SlowReader as slow:
            # Cut the client and free the replica's slot: nobody will read the rest of this answer in time.
            outcome.detail = "slow_reader"
            metrics.REJECTED.labels(deployment.name, "slow_reader").inc()
            log.warning("slow_reader", deployment=deployment.name, request_id=outcome.request_id, client=outcome.client)
            give_back_soon()  # what its frames took on the heap, once they are gone
            if entry_id is not None:
                withdrawn = True
                await asyncio.shield(self._withdraw(queue, outcome.request_id, entry_id, deployment))
            # Last: aborting the connection cancels this handler (handler_cancellation); the outcome stays as is.
            outcome.sent = True
            if request.transport is not None:
                request.transport.abort()  # drops what the transport still holds for this client, at once
            return slow.response
        except (asyncio.CancelledError, ConnectionResetError):
            if outcome.delivered or outcome.sent:
                # OpenAI clients close a stream as soon as they read `[DONE]`: that is a finished answer.
                raise
            # The client went away: withdraw the request so no replica spends time on it.
            outcome.status, outcome.detail = _ended_early(request)
            if entry_id is not None:
                withdrawn = True
                await asyncio.shield(self._withdraw(queue, outcome.request_id, entry_id, deployment))
            raise
        except BackendUnavailable:
            backend_failed = True
            if entry_id is not None and not withdrawn:
                # Accepted, but its wait could not be settled with Redis: withdraw it as soon as Redis answers.
                withdrawn = True
                self.withdrawals.add(queue, outcome.request_id, entry_id, _state_ttl_s(deployment))
            raise
        finally:
            self.reader.unsubscribe(outcome.request_id)
            metrics.child(metrics.IN_PROGRESS, deployment.name).dec()
            cleanup = self._clean_up(
                deployment.name, queue, slot, outcome.request_id, wake_open, entry_id is not None and not withdrawn
            )
            if backend_failed:
                # Redis is in trouble: the 503 goes out now; the cleanup waits for Redis on its own.
                task = asyncio.create_task(cleanup)
                self._cleanups.add(task)
                task.add_done_callback(self._cleanups.discard)
            else:
                await asyncio.shield(cleanup)  # however the request ended

    async def _cold_head(
        self, admission: Admission, deployment: Deployment, envelope: Envelope, head: Frame, outcome: Outcome
    ) -> None:
        """The head of a request that found the deployment cold: time its wait, and record the cold start."""
        outcome.cold_start_ms = max(0, now_ms() - envelope.enqueued_ms)
        if not admission.woke:
            return
        if head.status == 503:
            # No runner came up before the wait deadline (or the replica is draining): the start did not finish.
            await asyncio.shield(self._clear_wake(deployment.name, envelope.request_id))
            return
        # The answer is on its way: a lost statistic must not stop it.
        try:
            async with asyncio.timeout(self.edge.redis_timeout_s):
                ending = end_wake(self.redis, deployment.name, envelope.request_id, outcome.cold_start_ms)
                outcome.cold_start = await asyncio.shield(ending)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("cold_start_not_recorded", deployment=deployment.name, error=str(exc))
        observe_cold_start(deployment.name, outcome.cold_start)

    async def _clear_wake(self, deployment: str, request_id: str) -> None:
        """End the cold start `request_id` started as failed: it got no reply (or only a 503 for want of one)."""
        # Best effort: the mark expires after the wait timeout anyway, and the request's own answer matters more.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(self.edge.redis_timeout_s):
                observe_cold_start(deployment, await end_wake(self.redis, deployment, request_id))

    async def _backend(self, step: Awaitable[T], deployment: str) -> T:
        """One Redis step of a request, bounded by TIFFIN_REDIS_TIMEOUT_S; a failure is `BackendUnavailable` (503).

        The first failure of an outage is logged with its cause, and the first success after it; each request's
        own line says `backend_unavailable` (an outage under load must not double the log)."""
        try:
            async with asyncio.timeout(self.edge.redis_timeout_s):
                result = await step
        except (RedisError, OSError, TimeoutError) as exc:
            if not self.backend_down:
                self.backend_down = True
                log.warning("backend_unavailable", deployment=deployment, error=str(exc) or type(exc).__name__)
            raise BackendUnavailable(
                "the gateway cannot reach its queue right now; nothing was lost, retry shortly"
            ) from exc
        if self.backend_down:
            self.backend_down = False
            log.info("backend_available", deployment=deployment)
        return result

    async def _withdraw(self, queue: DeploymentQueue, request_id: str, entry_id: bytes, deployment: Deployment) -> None:
        """Withdraw a request nobody waits for any more (now, or once Redis answers again)."""
        await self.withdrawals.withdraw(queue, request_id, entry_id, _state_ttl_s(deployment))

    async def _clean_up(
        self, deployment: str, queue: DeploymentQueue, slot: Slot | None, request_id: str, wake_open: bool, forget: bool
    ) -> None:
        """What a finished request leaves in Redis, best effort: each piece also lapses by itself."""
        if forget and not wake_open:  # the usual end: the slot and the request state go in one round trip
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.edge.redis_timeout_s):
                    await self.gate.release(slot, also_delete=keys.request(request_id))
            return
        await self.gate.release(slot)
        if wake_open:
            # It ended without a head (wait deadline, client gone, error frame): let the next cold
            # request start and time the next cold start.
            await self._clear_wake(deployment, request_id)
        if forget:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self.edge.redis_timeout_s):
                    await queue.forget(request_id)

    async def _await_head(
        self,
        inbox: Inbox,
        deployment: Deployment,
        queue: DeploymentQueue,
        envelope: Envelope,
        entry_id: bytes,
    ) -> Frame:
        """Wait for a replica to answer; the wait deadline applies until a replica takes the request."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deployment.limits.wait_timeout_s
        taken = False
        while True:
            try:
                # asyncio.timeout, not wait_for: no extra task per frame on this hot path.
                async with asyncio.timeout_at(deadline):
                    frame = await inbox.get()
            except TimeoutError:
                # Withdrawn if still queued, even after a replica took it once: a replica that was shutting
                # down puts a request back unserved.
                cancel = queue.cancel(envelope.request_id, entry_id, even_if_taken=False)
                state = await self._backend(cancel, deployment.name)
                if state in ("taken", "started"):
                    if taken:
                        raise UpstreamTimeout(f"'{deployment.name}' took the request but did not answer") from None
                    # A replica has it: from here the upstream timeout applies (the proxy enforces it too).
                    taken = True
                    deadline = loop.time() + deployment.limits.upstream_timeout_s + self.reply_gap_grace_s
                    continue
                raise WaitTimeout(
                    f"no replica of '{deployment.name}' took the request within "
                    f"{deployment.limits.wait_timeout_s:.0f}s; it was withdrawn, retry later"
                ) from None
            if frame.kind is FrameKind.HEAD:
                return frame
            if frame.kind is FrameKind.ERROR:
                raise ReplicaError(frame.status or 502, str(frame.error.get("message")), frame.error.get("code"))


def _ended_early(request: web.Request) -> tuple[int, str]:
    """Why a request ended without its answer: the client left (499), or this interceptor stopped serving it."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return 499, "client_closed"
    return 503, "interceptor_stopped"


def _state_ttl_s(deployment: Deployment) -> int:
    """The request state outlives the longest legitimate wait, then expires (a crashed edge leaks nothing)."""
    limits = deployment.limits
    return int(limits.wait_timeout_s + 2 * limits.upstream_timeout_s + 60)
