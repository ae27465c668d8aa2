"""The controller's settings, read from `TIFFIN_*` environment variables (and the pod's own identity)."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from tiffin.common.env import env_int, env_positive, env_str, redis_url
from tiffin.kube.render import Platform

_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _default_namespace() -> str:
    try:
        return _SA_NAMESPACE.read_text().strip() or "tiffin"
    except OSError:
        return "tiffin"


@dataclass(frozen=True)
class ControllerSettings:
    namespace: str
    """TIFFIN_NAMESPACE: where TiffinDeployments and what they render live (default: the pod's own namespace)."""
    redis_url: str
    """REDIS_URL: the shared Redis the replica counts are written to (default redis://127.0.0.1:6379/0)."""
    identity: str
    """POD_NAME (downward API): this candidate's name in the leader Lease (default: host name + random suffix)."""
    lease_name: str
    """TIFFIN_LEASE_NAME: the coordination.k8s.io/v1 Lease the controllers compete for (default tiffin-controller)."""
    lease_duration_s: float
    """TIFFIN_LEASE_DURATION_S: how long a silent leader keeps the lease before another takes over (default 15)."""
    lease_renew_s: float
    """TIFFIN_LEASE_RENEW_S: how often the leader renews, and candidates retry (default 5; below the duration)."""
    host: str
    """TIFFIN_CONTROLLER_HOST: the probe listener's address (default 127.0.0.1; 0.0.0.0 in a pod)."""
    port: int
    """TIFFIN_CONTROLLER_PORT: the probe listener's port, serving GET /healthz (default 8081; 0 picks a free one)."""
    platform: Platform
    """TIFFIN_PLATFORM_IMAGE, TIFFIN_RUNNER_IMAGE, TIFFIN_SCALER_ADDRESS, TIFFIN_REDIS_SECRET: what `render` puts
    into each deployment's manifests (defaults: those of `tiffin render`)."""

    @classmethod
    def from_env(cls) -> ControllerSettings:
        namespace = env_str("TIFFIN_NAMESPACE", "").strip() or _default_namespace()
        duration = env_positive("TIFFIN_LEASE_DURATION_S", 15.0)
        renew = env_positive("TIFFIN_LEASE_RENEW_S", 5.0)
        if renew >= duration:
            raise SystemExit(f"environment variable TIFFIN_LEASE_RENEW_S={renew:g} must be below "
                             f"TIFFIN_LEASE_DURATION_S={duration:g}")  # fmt: skip
        defaults = Platform()
        platform = Platform(
            namespace=namespace,
            image=env_str("TIFFIN_PLATFORM_IMAGE", defaults.image),
            runner_image=env_str("TIFFIN_RUNNER_IMAGE", defaults.runner_image),
            scaler_address=env_str("TIFFIN_SCALER_ADDRESS", defaults.scaler_address),
            redis_secret=env_str("TIFFIN_REDIS_SECRET", defaults.redis_secret),
        )
        port = env_int("TIFFIN_CONTROLLER_PORT", 8081)
        if not 0 <= port <= 65535:
            raise SystemExit(f"environment variable TIFFIN_CONTROLLER_PORT={port} must be between 0 and 65535")
        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{secrets.token_hex(3)}"
        return cls(
            namespace=namespace,
            redis_url=redis_url(),
            identity=identity,
            lease_name=env_str("TIFFIN_LEASE_NAME", "tiffin-controller"),
            lease_duration_s=duration,
            lease_renew_s=renew,
            host=env_str("TIFFIN_CONTROLLER_HOST", "127.0.0.1").strip() or "127.0.0.1",
            port=port,
            platform=platform,
        )
