"""The interceptor's settings, read from `TIFFIN_*` environment variables."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from tiffin.env import env_float, env_int, env_paths, env_positive, env_str, redis_url


@dataclass(frozen=True)
class InterceptorSettings:
    config_paths: list[Path]
    """TIFFIN_CONFIG: deployment YAML files or folders, separated by ':' (required)."""
    redis_url: str
    """REDIS_URL: the shared Redis (default redis://127.0.0.1:6379/0)."""
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
    drain_timeout_s: float
    """TIFFIN_DRAIN_TIMEOUT_S: on SIGTERM, how long in-flight requests may finish (default 60)."""
    reply_gap_grace_s: float
    """TIFFIN_REPLY_GAP_GRACE_S: added to a deployment's upstream timeout before a silent reply is cut (30)."""

    reply_ttl_s: float
    """TIFFIN_REPLY_TTL_S: this interceptor's reply stream expires this long after it dies (default 60); other
    interceptors then withdraw the requests it had queued."""
    orphan_sweep_s: float
    """TIFFIN_ORPHAN_SWEEP_S: how often to look for requests whose interceptor died (default 10)."""
    keys_poll_s: float
    """TIFFIN_KEYS_POLL_S: how often to check Redis for new or revoked API keys (default 0.25; one GET)."""
    key_slot_lease_s: float
    """TIFFIN_KEY_SLOT_LEASE_S: a key's concurrency slot lapses this long after its interceptor dies (default 30);
    a live interceptor renews the slots it holds every third of it."""

    @classmethod
    def from_env(cls) -> InterceptorSettings:
        paths = env_paths("TIFFIN_CONFIG")
        if not paths:
            raise SystemExit("TIFFIN_CONFIG must name deployment YAML files or folders")
        default_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        return cls(
            config_paths=paths,
            redis_url=redis_url(),
            interceptor_id=env_str("TIFFIN_INTERCEPTOR_ID", default_id),
            host=env_str("TIFFIN_HOST", "127.0.0.1"),
            port=env_int("TIFFIN_PORT", 8080),
            admin_host=env_str("TIFFIN_ADMIN_HOST", "127.0.0.1"),
            admin_port=env_int("TIFFIN_ADMIN_PORT", 9090),
            drain_timeout_s=env_float("TIFFIN_DRAIN_TIMEOUT_S", 60.0),
            reply_gap_grace_s=env_float("TIFFIN_REPLY_GAP_GRACE_S", 30.0),
            reply_ttl_s=env_positive("TIFFIN_REPLY_TTL_S", 60.0),
            orphan_sweep_s=env_positive("TIFFIN_ORPHAN_SWEEP_S", 10.0),
            keys_poll_s=env_positive("TIFFIN_KEYS_POLL_S", 0.25),
            key_slot_lease_s=env_positive("TIFFIN_KEY_SLOT_LEASE_S", 30.0),
        )
