"""The scaler's settings, read from `TIFFIN_*` environment variables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tiffin.common.env import env_float, env_int, env_paths, env_str, redis_url


@dataclass(frozen=True)
class ScalerSettings:
    config_paths: list[Path]
    """TIFFIN_CONFIG: deployment YAML files or folders, separated by ':' (required)."""
    redis_url: str
    """REDIS_URL: the shared Redis (default redis://127.0.0.1:6379/0)."""
    host: str
    """TIFFIN_SCALER_HOST: gRPC listener address (default 127.0.0.1; 0.0.0.0 in containers)."""
    port: int
    """TIFFIN_SCALER_PORT: gRPC listener port (default 9091; 0 picks a free one)."""
    poll_s: float
    """TIFFIN_SCALER_POLL_S: how often open StreamIsActive streams re-evaluate (default 1.0).

    Only notices time passing (an idle period ending); activation is pushed by wakes and never waits for it.
    """
    grace_s: float
    """TIFFIN_SCALER_GRACE_S: on SIGTERM, how long unary calls in progress may finish (default 5)."""

    @classmethod
    def from_env(cls) -> ScalerSettings:
        paths = env_paths("TIFFIN_CONFIG")
        if not paths:
            raise SystemExit("TIFFIN_CONFIG must name deployment YAML files or folders")
        host = env_str("TIFFIN_SCALER_HOST", "127.0.0.1").strip()
        if not host:
            raise SystemExit("environment variable TIFFIN_SCALER_HOST must not be empty")
        port = env_int("TIFFIN_SCALER_PORT", 9091)
        if not 0 <= port <= 65535:
            raise SystemExit(f"environment variable TIFFIN_SCALER_PORT={port} must be between 0 and 65535")
        poll_s = env_float("TIFFIN_SCALER_POLL_S", 1.0)
        if not 0 < poll_s <= 3600:
            raise SystemExit(f"environment variable TIFFIN_SCALER_POLL_S={poll_s:g} must be above 0 and at most 3600")
        grace_s = env_float("TIFFIN_SCALER_GRACE_S", 5.0)
        if not 0 <= grace_s <= 600:
            raise SystemExit(f"environment variable TIFFIN_SCALER_GRACE_S={grace_s:g} must be between 0 and 600")
        return cls(config_paths=paths, redis_url=redis_url(), host=host, port=port, poll_s=poll_s, grace_s=grace_s)

    @property
    def address(self) -> str:
        """host:port for gRPC, with IPv6 literals bracketed."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"
