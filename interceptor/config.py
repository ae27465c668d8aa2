"""The interceptor's settings, read from `TIFFIN_*` environment variables."""

from __future__ import annotations

import ipaddress
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from interceptor.admin_auth import read_token
from tiffin.common.addresses import is_loopback
from tiffin.common.env import env_bool, env_float, env_int, env_paths, env_positive, env_str, redis_url
from tiffin.contracts.exceptions import TLSError
from tiffin.tls import CertPair, pairs_from

TLS_REQUIRED = (
    "the interceptor serves HTTPS: set TIFFIN_TLS_CERT_FILES and TIFFIN_TLS_KEY_FILES (PEM certificate chains and "
    f"their keys, '{os.pathsep}'-separated, in pairs), or TIFFIN_PLAIN_HTTP=1 to serve plain HTTP behind a "
    "TLS-terminating proxy"
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class EdgeSettings:
    """The public listener's limits; each one refused is counted in `tiffin_rejected_total{reason}`."""

    max_url_bytes: int = 4096
    """TIFFIN_MAX_URL_BYTES: longest request target (path and query); longer gets 414 (default 4096)."""
    max_header_bytes: int = 8190
    """TIFFIN_MAX_HEADER_BYTES: longest header (name and value); longer gets 431 (default 8190)."""
    max_headers: int = 100
    """TIFFIN_MAX_HEADERS: most headers in one request; more gets 431 (default 100)."""
    max_header_total_bytes: int = 65_536
    """TIFFIN_MAX_HEADER_TOTAL_BYTES: a request's request line and headers together; more gets 431, so a
    connection's unfinished headers never hold more than this (default 64 KiB)."""
    header_timeout_s: float = 10.0
    """TIFFIN_HEADER_TIMEOUT_S: a request's headers must be complete this long after the connection opens
    (or, on a kept-alive connection, after the request's first byte); then it is cut (408 if a request had
    begun) (default 10). Also bounds the TLS handshake."""
    body_timeout_s: float = 30.0
    """TIFFIN_BODY_TIMEOUT_S: the whole request body must arrive within this long after its headers; then
    408 and the connection is closed (default 30)."""
    keepalive_timeout_s: float = 75.0
    """TIFFIN_KEEPALIVE_TIMEOUT_S: an idle kept-alive connection is closed after this long (default 75)."""
    write_timeout_s: float = 30.0
    """TIFFIN_WRITE_TIMEOUT_S: a client that takes no reply bytes for this long is cut, and its request
    cancelled (reason `slow_reader`); any other answer it leaves unread cuts it 5 s later (default 30)."""
    reply_buffer_bytes: int = 1_048_576
    """TIFFIN_REPLY_BUFFER_BYTES: reply bytes held for one client that reads slower than the model writes;
    past it the client is cut and its request cancelled (reason `slow_reader`) (default 1 MiB)."""
    max_connections: int = 0
    """TIFFIN_MAX_CONNECTIONS: open client connections at most; new ones past it are closed at once
    (default 0: derived from the open-file limit, half of it less a reserve for Redis and logs, at most 16384)."""
    max_connections_per_client: int = 128
    """TIFFIN_MAX_CONNECTIONS_PER_CLIENT: open connections per client address (an IPv6 client by its /64;
    trusted proxies exempt) (default 128)."""
    redis_timeout_s: float = 5.0
    """TIFFIN_REDIS_TIMEOUT_S: the longest a request waits on Redis for any one step (a pooled connection, the
    command, its retries); past it the request gets 503 `backend_unavailable` with Retry-After, and a request
    already queued is withdrawn as soon as Redis answers again (default 5)."""
    trusted_proxies: tuple[Network, ...] = ()
    """TIFFIN_TRUSTED_PROXIES: comma-separated CIDRs of proxies in front whose X-Forwarded-For/-Proto/-Host
    are believed (default none: every client-sent X-Forwarded-* header is replaced)."""

    @classmethod
    def from_env(cls) -> EdgeSettings:
        return cls(
            max_url_bytes=_at_least("TIFFIN_MAX_URL_BYTES", 4096, 256),
            max_header_bytes=_at_least("TIFFIN_MAX_HEADER_BYTES", 8190, 256),
            max_headers=_at_least("TIFFIN_MAX_HEADERS", 100, 8),
            max_header_total_bytes=_at_least("TIFFIN_MAX_HEADER_TOTAL_BYTES", 65_536, 1024),
            header_timeout_s=env_positive("TIFFIN_HEADER_TIMEOUT_S", 10.0),
            body_timeout_s=env_positive("TIFFIN_BODY_TIMEOUT_S", 30.0),
            keepalive_timeout_s=env_positive("TIFFIN_KEEPALIVE_TIMEOUT_S", 75.0),
            write_timeout_s=env_positive("TIFFIN_WRITE_TIMEOUT_S", 30.0),
            reply_buffer_bytes=_at_least("TIFFIN_REPLY_BUFFER_BYTES", 1_048_576, 65_536),
            max_connections=_at_least("TIFFIN_MAX_CONNECTIONS", 0, 0),
            max_connections_per_client=_at_least("TIFFIN_MAX_CONNECTIONS_PER_CLIENT", 128, 1),
            redis_timeout_s=env_positive("TIFFIN_REDIS_TIMEOUT_S", 5.0),
            trusted_proxies=parse_networks("TIFFIN_TRUSTED_PROXIES", env_str("TIFFIN_TRUSTED_PROXIES", "")),
        )


def _at_least(name: str, default: int, minimum: int) -> int:
    value = env_int(name, default)
    if value < minimum:
        raise SystemExit(f"environment variable {name}={value} must be at least {minimum}")
    return value


def parse_networks(name: str, raw: str) -> tuple[Network, ...]:
    """Comma- or space-separated addresses or CIDRs (`10.0.0.0/8, ::1`)."""
    networks = []
    for item in raw.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise SystemExit(f"environment variable {name}: {item!r} is not an address or CIDR") from exc
    return tuple(networks)


@dataclass(frozen=True)
class InterceptorSettings:
    config_paths: list[Path]
    """TIFFIN_CONFIG: deployment YAML files or folders, separated by ':' (required)."""
    redis_url: str
    """REDIS_URL: the shared Redis (default redis://127.0.0.1:6379/0)."""
    redis_max_connections: int
    """TIFFIN_REDIS_MAX_CONNECTIONS: connections to Redis for requests (default 64). A request holds one only
    for the length of one command, never while it waits, so a burst far larger than this queues for them
    (within TIFFIN_REDIS_TIMEOUT_S) instead of failing; the reply reader has its own."""
    interceptor_id: str
    """TIFFIN_INTERCEPTOR_ID: names this replica's reply stream (default: host-pid-random)."""
    host: str
    """TIFFIN_HOST: public listener address (default 127.0.0.1; 0.0.0.0 in containers)."""
    port: int
    """TIFFIN_PORT: public listener port (default 8080)."""
    admin_host: str
    """TIFFIN_ADMIN_HOST: admin listener address for /healthz, /readyz, /metrics (default 127.0.0.1)."""
    admin_port: int
    """TIFFIN_ADMIN_PORT: admin listener port (default 9090)."""
    admin_token: str | None
    """TIFFIN_ADMIN_TOKEN_FILE: a file holding the admin listener's bearer token (at least 16 characters).
    Required when TIFFIN_ADMIN_HOST is not a loopback address; then every admin path but /healthz and /readyz
    asks for it. Default: none (loopback only)."""
    drain_timeout_s: float
    """TIFFIN_DRAIN_TIMEOUT_S: on SIGTERM, how long in-flight requests may finish (default 60)."""
    reply_gap_grace_s: float
    """TIFFIN_REPLY_GAP_GRACE_S: added to a deployment's upstream timeout before a silent reply is cut (30)."""

    reply_ttl_s: float
    """TIFFIN_REPLY_TTL_S: this interceptor's reply stream expires this long after it dies (default 60); other
    interceptors then withdraw the requests it had queued."""
    orphan_sweep_s: float
    """TIFFIN_ORPHAN_SWEEP_S: how often to look for requests whose interceptor died (default 10)."""
    tls: list[CertPair]
    """TIFFIN_TLS_CERT_FILES, TIFFIN_TLS_KEY_FILES: the public listener's certificate chains (leaf first) and
    their private keys, PEM, os.pathsep-separated, the n-th key for the n-th certificate. The first pair is
    served to clients whose SNI names no other pair's host (no default: these or TIFFIN_PLAIN_HTTP are required)."""
    plain_http: bool
    """TIFFIN_PLAIN_HTTP: 1 to serve plain HTTP, for a TLS-terminating proxy in front (default 0)."""
    tls_reload_s: float
    """TIFFIN_TLS_RELOAD_S: how often certificate files are checked for renewal (default 10)."""

    keys_poll_s: float
    """TIFFIN_KEYS_POLL_S: how often to check Redis for new or revoked API keys (default 0.25; one GET)."""
    history_flush_s: float
    """TIFFIN_HISTORY_FLUSH_S: how often the dashboard's request history, counted in memory, is added into
    Redis (default 2; one transaction for every deployment)."""
    key_slot_lease_s: float
    """TIFFIN_KEY_SLOT_LEASE_S: a key's concurrency slot lapses this long after its interceptor dies (default 30);
    a live interceptor renews the slots it holds every third of it."""
    edge: EdgeSettings = field(default_factory=lambda: EdgeSettings())
    """Limits of the public listener against slow, broken and hostile clients (see `EdgeSettings`)."""

    @property
    def scheme(self) -> str:
        return "http" if self.plain_http else "https"

    @classmethod
    def from_env(cls) -> InterceptorSettings:
        paths = env_paths("TIFFIN_CONFIG")
        if not paths:
            raise SystemExit("TIFFIN_CONFIG must name deployment YAML files or folders")
        tls, plain_http = _tls_from_env()
        default_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        admin_host = env_str("TIFFIN_ADMIN_HOST", "127.0.0.1")
        token_file = env_str("TIFFIN_ADMIN_TOKEN_FILE", "")
        admin_token = read_token(Path(token_file)) if token_file else None
        if admin_token is None and not is_loopback(admin_host):
            raise SystemExit(
                f"TIFFIN_ADMIN_HOST={admin_host} would expose status and metrics beyond this machine without a "
                "credential: set TIFFIN_ADMIN_TOKEN_FILE to a file holding a token, or bind the admin listener "
                "to 127.0.0.1"
            )
        return cls(
            config_paths=paths,
            redis_url=redis_url(),
            redis_max_connections=_at_least("TIFFIN_REDIS_MAX_CONNECTIONS", 64, 4),
            interceptor_id=env_str("TIFFIN_INTERCEPTOR_ID", default_id),
            host=env_str("TIFFIN_HOST", "127.0.0.1"),
            port=env_int("TIFFIN_PORT", 8080),
            admin_host=admin_host,
            admin_port=env_int("TIFFIN_ADMIN_PORT", 9090),
            admin_token=admin_token,
            drain_timeout_s=env_float("TIFFIN_DRAIN_TIMEOUT_S", 60.0),
            reply_gap_grace_s=env_float("TIFFIN_REPLY_GAP_GRACE_S", 30.0),
            reply_ttl_s=env_positive("TIFFIN_REPLY_TTL_S", 60.0),
            orphan_sweep_s=env_positive("TIFFIN_ORPHAN_SWEEP_S", 10.0),
            tls=tls,
            plain_http=plain_http,
            tls_reload_s=env_positive("TIFFIN_TLS_RELOAD_S", 10.0),
            keys_poll_s=env_positive("TIFFIN_KEYS_POLL_S", 0.25),
            key_slot_lease_s=env_positive("TIFFIN_KEY_SLOT_LEASE_S", 30.0),
            history_flush_s=env_positive("TIFFIN_HISTORY_FLUSH_S", 2.0),
            edge=EdgeSettings.from_env(),
        )


def _tls_from_env() -> tuple[list[CertPair], bool]:
    """HTTPS from the named files, or plain HTTP only when asked for; neither (or both) is a start error."""
    certs, keys = env_paths("TIFFIN_TLS_CERT_FILES"), env_paths("TIFFIN_TLS_KEY_FILES")
    plain_http = env_bool("TIFFIN_PLAIN_HTTP")
    if plain_http and (certs or keys):
        raise SystemExit("set either TIFFIN_PLAIN_HTTP=1 or TIFFIN_TLS_CERT_FILES/TIFFIN_TLS_KEY_FILES, not both")
    if not plain_http and not (certs or keys):
        raise SystemExit(TLS_REQUIRED)
    try:
        return pairs_from(certs, keys, "TIFFIN_TLS_CERT_FILES/TIFFIN_TLS_KEY_FILES"), plain_http
    except TLSError as exc:
        raise SystemExit(str(exc)) from exc
