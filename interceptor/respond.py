"""Writing a replica's reply to the client: a whole answer in one write, a stream frame by frame, and nothing
past the write deadline (a reader too slow for its reply is cut)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from aiohttp import web

from interceptor import metrics
from interceptor.outcome import Outcome
from interceptor.replies import Inbox
from tiffin.contracts.config import Deployment
from tiffin.contracts.errors import sse_error_event
from tiffin.contracts.frames import COLD_START_HEADER, COLD_START_PHASES_HEADER, REPLY_HEADERS, Frame, FrameKind

SSE_DONE = b"data: [DONE]\n\n"
# How an SSE error event starts: OpenAI's shape (tiffin's and vLLM's), and vLLM's older `ErrorResponse`.
_SSE_ERRORS = (b'data: {"error"', b'data: {"object": "error"', b'data: {"object":"error"')


class SlowReader(Exception):
    """The client reads the reply slower than it comes: its buffer overflowed or a write passed its deadline."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("slow reader")
        self.response = response


class ReplyWriter:
    """Writes replies to clients, each write within the write deadline."""

    def __init__(self, write_timeout_s: float, reply_gap_grace_s: float) -> None:
        self.write_timeout_s = write_timeout_s
        self.reply_gap_grace_s = reply_gap_grace_s
        """Beyond the upstream timeout, how long a started reply may go quiet before it counts as stalled."""

    async def relay(
        self,
        request: web.Request,
        inbox: Inbox,
        head: Frame,
        deployment: Deployment,
        outcome: Outcome,
    ) -> web.StreamResponse:
        """Answer the client from `head` on: a whole answer in one write, else each frame's chunks as they come."""
        sse = head.headers.get("content-type", "").startswith("text/event-stream")
        backlog = [] if sse else inbox.take_ready()
        body = None if sse else whole_body(backlog, head.by)
        # A whole non-streamed answer (its proxy writes it in one step, so it is all here) goes out in one write.
        response = (
            web.StreamResponse(status=head.status) if body is None else web.Response(status=head.status, body=body)
        )
        for name in REPLY_HEADERS:
            if name in head.headers:
                response.headers[name] = head.headers[name]
        response.headers["X-Request-Id"] = outcome.request_id
        if outcome.cold_start_ms is not None:
            response.headers[COLD_START_HEADER] = str(outcome.cold_start_ms)
        if outcome.cold_start is not None:
            response.headers[COLD_START_PHASES_HEADER] = outcome.cold_start.header()
        if isinstance(response, web.Response):
            return await self._send_whole(request, inbox, response, outcome)
        await response.prepare(request)
        gap = deployment.limits.upstream_timeout_s + self.reply_gap_grace_s
        last_seq = 0
        out: list[bytes] = []  # chunks taken but not yet written: those that came together go out in one write
        while True:
            if not backlog:
                backlog = inbox.take_ready()
            if not backlog and out:
                await self._write_out(response, inbox, out, outcome, sse)
                continue  # more may have come meanwhile
            try:
                if backlog:
                    frame = backlog.pop(0)
                else:
                    async with asyncio.timeout(gap):
                        frame = await inbox.get()
            except TimeoutError:
                frame = Frame.fail(outcome.request_id, head.by, 504, "the reply stalled", "upstream_timeout")
            if inbox.overflowed:
                await self._say_slow(request, response, sse)
                raise SlowReader(response)
            if frame.by != head.by:
                continue  # a second replica answering a redelivered copy: one answer only
            if frame.kind is FrameKind.CHUNK and frame.seq:
                if frame.seq <= last_seq:
                    continue  # the same chunk written twice (a retried XADD): relayed once
                last_seq = frame.seq
            if frame.kind is FrameKind.CHUNK:
                out.append(frame.data)
                if sse and outcome.error is None and (error := sse_error_code(frame.data)) is not None:
                    # An error event written upstream (the API server's when its runner died, or the engine's
                    # own): the stream ends cleanly on the wire, but broken; the log and metrics say so.
                    outcome.error, outcome.detail = error, "stream_broken"
                    metrics.STREAMS_BROKEN.labels(deployment.name, error).inc()
            elif frame.kind is FrameKind.END:
                break
            elif frame.kind is FrameKind.ERROR:
                # Broken after its head went out: logged with the status it started with, and counted as broken
                # (once, should an error event have come first).
                code = str(frame.error.get("code") or "upstream_failed")
                if outcome.error is None:
                    outcome.error, outcome.detail = code, "stream_broken"
                    metrics.STREAMS_BROKEN.labels(deployment.name, code).inc()
                await self._write_out(response, inbox, out, outcome, sse)
                if sse:
                    message = str(frame.error.get("message"))
                    await self._write(response, inbox, sse_error_event(message, code))
                    break
                # A plain body cut short cannot be marked inside itself: end the connection without the
                # final chunk, so the client sees an incomplete response rather than a truncated success.
                if request.transport is not None:
                    request.transport.close()
                outcome.sent = True
                return response
        await self._write_out(response, inbox, out, outcome, sse)
        return await self._end(response, inbox, outcome)

    async def _send_whole(
        self, request: web.Request, inbox: Inbox, response: web.Response, outcome: Outcome
    ) -> web.StreamResponse:
        """Headers and body in one write, within the write deadline."""
        await response.prepare(request)  # headers are held until the body goes with them
        return await self._end(response, inbox, outcome)

    async def _end(self, response: web.StreamResponse, inbox: Inbox, outcome: Outcome) -> web.StreamResponse:
        """Finish the response (what is buffered, then its end) within the write deadline."""
        try:
            async with inbox.writing(self.write_timeout_s):
                await response.write_eof()
        except TimeoutError as exc:
            raise SlowReader(response) from exc
        outcome.sent = True
        return response

    async def _write_out(
        self, response: web.StreamResponse, inbox: Inbox, out: list[bytes], outcome: Outcome, sse: bool
    ) -> None:
        """Write the chunks taken so far in one write (and empty `out`)."""
        if not out:
            return
        await self._write(response, inbox, b"".join(out) if len(out) > 1 else out[0])
        outcome.delivered = sse and out[-1].endswith(SSE_DONE)
        out.clear()

    async def _write(self, response: web.StreamResponse, inbox: Inbox, data: bytes) -> None:
        """One write to the client, within the write deadline (and cut at once if its inbox overflows)."""
        try:
            async with inbox.writing(self.write_timeout_s):
                await response.write(data)
        except TimeoutError as exc:
            raise SlowReader(response) from exc

    async def _say_slow(self, request: web.Request, response: web.StreamResponse, sse: bool) -> None:
        """Tell an SSE client why its stream ends, if its connection can still take a few bytes without waiting."""
        transport = request.transport
        if not sse or transport is None or transport.get_write_buffer_size() > 0:
            return
        event = sse_error_event("the client read the reply too slowly; the request was cancelled", "slow_reader")
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(1.0):
                await response.write(event)


def whole_body(frames: list[Frame], by: str) -> bytes | None:
    """The body of a non-streamed answer if `frames` hold all of it up to its end (None: relay it as it comes).

    Follows the relay's rules: frames of `by` only, each numbered chunk once; an error frame means no."""
    parts: list[bytes] = []
    last_seq = 0
    for frame in frames:
        if frame.by != by:
            continue
        if frame.kind is FrameKind.END:
            return b"".join(parts)
        if frame.kind is not FrameKind.CHUNK:
            return None
        if frame.seq:
            if frame.seq <= last_seq:
                continue
            last_seq = frame.seq
        parts.append(frame.data)
    return None


def sse_error_code(data: bytes) -> str | None:
    """The code of an SSE error event in `data` (`data: {"error": {...}}`, or vLLM's `"object": "error"`), if any.

    Unescaped quotes never occur inside a JSON string, so generated text cannot look like this."""
    for marker in _SSE_ERRORS:
        at = data.find(marker)
        if at < 0:
            continue
        line = data[at:].split(b"\n", 1)[0].removeprefix(b"data: ")
        try:
            event = json.loads(line)
        except ValueError:
            return "upstream_failed"
        error = event.get("error", event) if isinstance(event, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        return str(code) if isinstance(code, str) and code else "upstream_failed"
    return None
