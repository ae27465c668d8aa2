"""The proxy sidecar's settings, read from `TIFFIN_*` environment variables."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from tiffin.common.env import env_float, env_paths, env_positive, env_str, redis_url


@dataclass(frozen=True)
class ProxySettings:
    config_paths: list[Path]
    """TIFFIN_CONFIG: deployment YAML files or folders, separated by ':' (required)."""
    deployment: str
    """TIFFIN_DEPLOYMENT: the deployment whose queue this sidecar drains (required)."""
    redis_url: str
    """REDIS_URL: the shared Redis (default redis://127.0.0.1:6379/0)."""
    replica_id: str
    """TIFFIN_REPLICA_ID: this API-server replica's id, also its consumer name (default: host-pid-random)."""
    upstream_url: str
    """TIFFIN_UPSTREAM_URL: the API server beside this sidecar (default http://127.0.0.1:8000)."""
    heartbeat_ttl_s: float
    """TIFFIN_HEARTBEAT_TTL_S: a replica silent this long counts as dead; its requests are redelivered, or its
    streams ended with their error event (4; it heartbeats every third of this)."""
    reclaim_interval_s: float
    """TIFFIN_RECLAIM_INTERVAL_S: how often to look for requests held by dead replicas (1)."""
    drain_timeout_s: float
    """TIFFIN_DRAIN_TIMEOUT_S: on SIGTERM, how long in-flight requests may finish (default 120)."""
    ready_timeout_s: float
    """TIFFIN_READY_TIMEOUT_S: how long to wait for the API server's /health at start (default 300)."""
    cancel_poll_s: float = 1.0
    """TIFFIN_CANCEL_POLL_S: how often an in-flight request's state is checked for a cancellation whose push
    was missed (pushed cancellations act at once) (default 1)."""

    @classmethod
    def from_env(cls) -> ProxySettings:
        paths = env_paths("TIFFIN_CONFIG")
        deployment = env_str("TIFFIN_DEPLOYMENT", "")
        if not paths or not deployment:
            raise SystemExit("TIFFIN_CONFIG and TIFFIN_DEPLOYMENT must be set")
        return cls(
            config_paths=paths,
            deployment=deployment,
            redis_url=redis_url(),
            replica_id=env_str("TIFFIN_REPLICA_ID", f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"),
            upstream_url=env_str("TIFFIN_UPSTREAM_URL", "http://127.0.0.1:8000").rstrip("/"),
            heartbeat_ttl_s=env_positive("TIFFIN_HEARTBEAT_TTL_S", 4.0),
            reclaim_interval_s=env_positive("TIFFIN_RECLAIM_INTERVAL_S", 1.0),
            drain_timeout_s=env_float("TIFFIN_DRAIN_TIMEOUT_S", 120.0),
            ready_timeout_s=env_float("TIFFIN_READY_TIMEOUT_S", 300.0),
            cancel_poll_s=env_positive("TIFFIN_CANCEL_POLL_S", 1.0),
        )
