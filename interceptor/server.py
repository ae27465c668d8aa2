"""The public listener: aiohttp's HTTP/1.1 server with limits against slow, broken and hostile clients.

What it adds to aiohttp (3.14; it subclasses `web.RequestHandler`, see the pin in pyproject.toml):
- parser errors answered OpenAI-shaped (400, 414 URL too long, 431 headers too large or too many), with
  `Server: tiffin` and an `X-Request-Id`, logged as one line (client address and reason), never a traceback;
- a deadline for each request's headers (slowloris), besides aiohttp's idle keep-alive timeout; the TLS
  handshake gets the same deadline;
- a deadline for a client that stops reading what it is sent (any response, e.g. pipelined requests whose
  answers are never read): past it the connection is cut (the relay has its own, finer one for streams);
- caps on open connections, in total and per client address: over a cap a new connection is closed at once,
  counted in `tiffin_rejected_total`, and logged in aggregate (one line per interval, not one per connection);
- the open-file soft limit raised to the hard limit, and the event loop's "Too many open files" accept
  errors counted and aggregated instead of logged as a traceback each.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import resource
import ssl
import uuid
from collections import Counter
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from interceptor import metrics
from interceptor.config import EdgeSettings
from interceptor.forwarding import is_trusted
from tiffin.contracts.errors import error_body

log = structlog.get_logger("interceptor.edge")

SERVER_NAME = "tiffin"
"""The `Server` header on every response: no product version for a scanner to match."""

# How long a request's unread body is drained after its answer before the connection is closed: long enough
# for a client still sending (a refused upload) to read the answer, short enough to hold nothing up.
LINGERING_S = 2.0
# The connection-level write deadline backs the relay's own (TIFFIN_WRITE_TIMEOUT_S), which acts first on streams.
WRITE_BACKSTOP_S = 5.0
# Connections kept for Redis, logs and listeners when the connection cap is derived from the open-file limit.
FD_RESERVE = 600
AUTO_MAX_CONNECTIONS = 16_384
LOG_INTERVAL_S = 10.0
BACKLOG = 1024

_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def raise_open_file_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit (at start); returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("open_file_limit_unchanged", soft=soft, hard=hard, error=str(exc))
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_cap(settings: EdgeSettings, open_files: int) -> int:
    """The total connection cap: the configured one, or half the open-file limit less a reserve."""
    if settings.max_connections > 0:
        return settings.max_connections
    return max(64, min(AUTO_MAX_CONNECTIONS, open_files // 2 - FD_RESERVE))


class RefusalLog:
    """Aggregates refusals into one warning per interval, so a flood cannot flood the log too."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._counts: Counter[str] = Counter()
        self._last_client = "-"
        self._flush: asyncio.TimerHandle | None = None

    def note(self, reason: str, client: str) -> None:
        """Count one refusal; the first of a quiet period is logged at once, the rest summed per interval."""
        self._last_client = client
        if self._flush is None:
            log.warning("connections_refused", counts={reason: 1}, last_client=client, interval_s=self.interval_s)
            self._flush = asyncio.get_running_loop().call_later(self.interval_s, self._report)
            return
        self._counts[reason] += 1

    def _report(self) -> None:
        if not self._counts:
            self._flush = None
            return
        log.warning(
            "connections_refused", counts=dict(self._counts), last_client=self._last_client, interval_s=self.interval_s
        )
        self._counts.clear()
        self._flush = asyncio.get_running_loop().call_later(self.interval_s, self._report)

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None


def client_key(address: str) -> str:
    """What the per-client cap counts by: the IPv4 address, or the IPv6 /64 (one host can hold a whole /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address


class ConnectionLimits:
    """Open connections in total and per client (address, or IPv6 /64); trusted proxies carry many: exempt."""

    def __init__(self, settings: EdgeSettings, total: int) -> None:
        self.settings = settings
        self.total = total
        self.open = 0
        self.by_address: Counter[str] = Counter()
        self.refusals = RefusalLog()

    def admit(self, address: str) -> str | None:
        """Count a new connection in, or return the reason it is refused."""
        if self.open >= self.total:
            return "connections"
        trusted = is_trusted(address, self.settings.trusted_proxies)
        key = client_key(address)
        if not trusted and self.by_address[key] >= self.settings.max_connections_per_client:
            return "client_connections"
        self.open += 1
        self.by_address[key] += 1
        return None

    def release(self, address: str) -> None:
        key = client_key(address)
        self.open -= 1
        self.by_address[key] -= 1
        if self.by_address[key] <= 0:
            del self.by_address[key]


def _raw_error(status: int, reason: str, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 error response, for a connection that has no request object to answer through."""
    body = json.dumps(error_body(message, "invalid_request_error", code)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nServer: {SERVER_NAME}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Request-Id: {uuid.uuid4().hex}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class EdgeProtocol(web.RequestHandler):
    """One client connection: aiohttp's request handler plus admission, a header deadline and quiet errors."""

    def __init__(self, manager: web.Server, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._address: str | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._began = False  # bytes of a request whose headers are not complete yet have arrived
        self._header_bytes = 0  # how many

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
        refused = self._limits.admit(address)
        if refused is not None:
            metrics.REJECTED.labels("-", refused).inc()
            self._limits.refusals.note(refused, address)
            transport.close()  # before aiohttp sees it: no handler task, no buffers
            return
        self._address = address
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._address is None:
            return  # refused at connection_made: aiohttp never knew of it
        self._disarm_header_timer()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._limits.release(self._address)
        self._address = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        requests_before = self._request_count
        # Between requests (the handler waits for the next one): this byte starts a new request's headers.
        between = self._waiter is not None and not self._waiter.done()
        super().data_received(data)
        if self._request_count != requests_before:
            self._disarm_header_timer()  # the headers of a request are complete (or failed to parse)
            self._began, self._header_bytes = False, 0
        elif data and (between or self._header_timer is not None):
            self._began = True
            self._header_bytes += len(data)
            if self._header_bytes > self._limits.settings.max_header_total_bytes:
                self._cut(
                    "headers_too_large", 431, "Request Header Fields Too Large", "the request headers are too large"
                )
                return
            if self._header_timer is None:
                self._arm_header_timer()

    def pause_writing(self) -> None:
        # The client is not taking what it is sent: it has until the deadline to start again.
        super().pause_writing()
        if self._write_timer is None:
            deadline = self._limits.settings.write_timeout_s + WRITE_BACKSTOP_S
            self._write_timer = asyncio.get_running_loop().call_later(deadline, self._reads_too_slowly)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _reads_too_slowly(self) -> None:
        self._write_timer = None
        if self.transport is None:
            return
        metrics.REJECTED.labels("-", "slow_reader").inc()
        self._limits.refusals.note("slow_reader", self._address or "-")
        self.transport.abort()  # what it holds for this client is dropped at once

    def _arm_header_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self._limits.settings.header_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._began:
            self._cut("header_timeout", 408, "Request Timeout", "request headers took too long")
            return
        if self.transport is None or self._force_close:
            return
        metrics.REJECTED.labels("-", "header_timeout").inc()
        self._limits.refusals.note("header_timeout", self._address or "-")
        self.force_close()  # nothing was asked: nothing to answer

    def _cut(self, reason: str, status: int, phrase: str, message: str) -> None:
        """End a connection whose request headers broke a limit, saying why (nothing else is on the wire yet)."""
        self._disarm_header_timer()
        transport = self.transport
        if transport is None or self._force_close:
            return
        metrics.REJECTED.labels("-", reason).inc()
        self._limits.refusals.note(reason, self._address or "-")
        transport.write(_raw_error(status, phrase, message, reason))
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Parser errors (and anything that escaped the app) as OpenAI-shaped JSON, logged as one line."""
        status, reason, text = self._classify(status, exc)
        request_id = uuid.uuid4().hex
        client = self._address or "-"
        if status >= 500:
            # Only a bug gets here (the app's own catch-all answers everything else): keep the traceback.
            log.error("unhandled_error", client=client, request_id=request_id, exc_info=exc)
        else:
            # The exception's own text may quote the client's bytes: name its kind only.
            log.warning(
                "rejected", client=client, request_id=request_id, status=status, reason=reason,
                error=type(exc).__name__ if exc else None,
            )  # fmt: skip
            metrics.REJECTED.labels("-", reason).inc()
        if request.writer.output_size > 0:
            raise ConnectionError("the response had begun: the connection is cut instead")
        body = error_body(text, "server_error" if status >= 500 else "invalid_request_error", reason)
        response = web.json_response(body, status=status)
        response.headers["Server"] = SERVER_NAME
        response.headers["X-Request-Id"] = request_id
        response.force_close()
        return response

    def _classify(self, status: int, exc: BaseException | None) -> tuple[int, str, str]:
        settings = self._limits.settings
        if isinstance(exc, LineTooLong):
            limit = exc.args[1] if len(exc.args) > 1 else None
            if limit == settings.max_url_bytes and settings.max_url_bytes != settings.max_header_bytes:
                return 414, "uri_too_long", f"the request URL is longer than {settings.max_url_bytes} bytes"
            return 431, "headers_too_large", f"a request header is longer than {settings.max_header_bytes} bytes"
        if isinstance(exc, BadHttpMessage) and "too many headers" in exc.message.lower():
            return 431, "headers_too_large", f"the request has more than {settings.max_headers} headers"
        if status >= 500:
            return 500, "internal_error", "the server failed to handle this request"
        if status == 504:
            return 504, "timeout", "the request timed out"
        return 400, "bad_request", "malformed HTTP request"


class EdgeSite(web.TCPSite):
    """A TCP site whose connections are `EdgeProtocol`s and whose TLS handshakes have a deadline."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        settings: EdgeSettings,
        limits: ConnectionLimits,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, backlog=BACKLOG)
        self.settings = settings
        self.limits = limits

    async def start(self) -> None:
        # BaseSite.start registers the site with its runner (so runner.cleanup() stops it); TCPSite.start
        # would create the server with aiohttp's own protocol, so it is replaced here.
        await super(web.TCPSite, self).start()
        loop = asyncio.get_running_loop()
        manager = self._runner.server
        assert manager is not None
        settings = self.settings
        handler_kwargs: dict[str, Any] = {
            "loop": loop,
            "limits": self.limits,
            "access_log": None,
            "keepalive_timeout": settings.keepalive_timeout_s,
            "max_line_size": settings.max_url_bytes,
            "max_field_size": settings.max_header_bytes,
            "max_headers": settings.max_headers,
            "lingering_time": LINGERING_S,
            # Bodies are decoded by the relay, which bounds what a compressed body may grow to.
            "auto_decompress": False,
        }

        def protocol() -> EdgeProtocol:
            return EdgeProtocol(manager, **handler_kwargs)

        server = await loop.create_server(
            protocol,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=settings.header_timeout_s if self._ssl_context else None,
        )
        self._server = server
        self._bound_port = server.sockets[0].getsockname()[1] if server.sockets else self._port


def _quiet_accept_errors(refusals: RefusalLog) -> Any:
    """A loop exception handler that counts "out of file descriptors" accept errors instead of logging each."""

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _ACCEPT_ERRNOS and "accept" in str(context.get("message")):
            metrics.REJECTED.labels("-", "out_of_files").inc()
            refusals.note("out_of_files", "-")
            return
        loop.default_exception_handler(context)

    return handler


async def start_public(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None, settings: EdgeSettings
) -> web.AppRunner:
    """Serve `app` on the public address with the edge's limits; `runner.cleanup()` stops it."""
    open_files = raise_open_file_limit()
    limits = ConnectionLimits(settings, connection_cap(settings, open_files))
    asyncio.get_running_loop().set_exception_handler(_quiet_accept_errors(limits.refusals))
    app.on_cleanup.append(lambda _app: _close(limits))
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = EdgeSite(runner, host, port, ssl_context, settings, limits)
    await site.start()
    log.info(
        "edge_limits",
        open_files=open_files,
        max_connections=limits.total,
        max_connections_per_client=settings.max_connections_per_client,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        keepalive_timeout_s=settings.keepalive_timeout_s,
    )
    return runner


async def _close(limits: ConnectionLimits) -> None:
    limits.refusals.close()
