"""Settings of the API server and the runner, read once from the environment at start-up.

A missing or wrong setting stops the process with a message naming it (`SystemExit`), before anything starts.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from tiffin.common.env import env_float, env_int, env_paths, env_positive, env_str, redis_url
from tiffin.common.models import default_cache_dir
from tiffin.contracts.config import Deployment, load_deployments
from tiffin.contracts.exceptions import ConfigError


def _default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def load_deployment() -> Deployment:
    """The deployment named by `TIFFIN_DEPLOYMENT` among the files in `TIFFIN_CONFIG`."""
    paths = env_paths("TIFFIN_CONFIG")
    if not paths:
        raise SystemExit("TIFFIN_CONFIG is not set: give the deployment YAML file(s), separated by ':'")
    try:
        deployments = load_deployments(paths)
    except ConfigError as exc:
        raise SystemExit("invalid deployment configuration:\n" + "\n".join(exc.problems)) from exc
    name = os.environ.get("TIFFIN_DEPLOYMENT", "")
    names = sorted(d.name for d in deployments)
    if not name:
        raise SystemExit(f"TIFFIN_DEPLOYMENT is not set: name one of {names}")
    for deployment in deployments:
        if deployment.name == name:
            return deployment
    raise SystemExit(f"TIFFIN_DEPLOYMENT={name!r} is not in TIFFIN_CONFIG; known deployments: {names}")


@dataclass(frozen=True)
class _Common:
    deployment: Deployment
    """From TIFFIN_CONFIG (YAML paths, required) and TIFFIN_DEPLOYMENT (its name, required)."""
    redis_url: str
    """REDIS_URL; default redis://127.0.0.1:6379/0."""
    replica_id: str
    """TIFFIN_REPLICA_ID; default hostname-pid-random."""
    heartbeat_ttl_s: float
    """TIFFIN_HEARTBEAT_TTL_S: how long the registry lists this replica without a heartbeat; default 10."""


class _CommonFields(TypedDict):
    deployment: Deployment
    redis_url: str
    replica_id: str
    heartbeat_ttl_s: float


def _common() -> _CommonFields:
    return {
        "deployment": load_deployment(),
        "redis_url": redis_url(),
        "replica_id": env_str("TIFFIN_REPLICA_ID", "") or _default_replica_id(),
        "heartbeat_ttl_s": env_float("TIFFIN_HEARTBEAT_TTL_S", 10.0),
    }


@dataclass(frozen=True)
class ApiSettings(_Common):
    """One API server replica."""

    host: str
    """TIFFIN_API_HOST; default 127.0.0.1."""
    port: int
    """TIFFIN_API_PORT; default 8000."""
    result_ttl_s: float = 600.0
    """TIFFIN_RESULT_TTL_S: how long a runner's non-streamed answer is kept in Redis for a replica that takes the
    request again after its first taker died (normally deleted as soon as it is relayed); default 600."""
    result_max_bytes: int = 8 * 1024 * 1024
    """TIFFIN_RESULT_MAX_BYTES: larger non-streamed answers are relayed as they come, without being saved (so a
    redelivery of such a request may run it again); default 8 MiB."""

    @classmethod
    def from_env(cls) -> ApiSettings:
        return cls(
            **_common(),
            host=env_str("TIFFIN_API_HOST", "127.0.0.1"),
            port=env_int("TIFFIN_API_PORT", 8000),
            result_ttl_s=env_positive("TIFFIN_RESULT_TTL_S", 600.0),
            result_max_bytes=env_int("TIFFIN_RESULT_MAX_BYTES", 8 * 1024 * 1024),
        )


@dataclass(frozen=True)
class RunnerSettings(_Common):
    """One runner replica (the engine it starts listens on `host:port`)."""

    host: str
    """TIFFIN_RUNNER_HOST: the engine's listen address; default 127.0.0.1."""
    port: int
    """TIFFIN_RUNNER_PORT: the engine's port; default 8100."""
    cache_dir: Path
    """TIFFIN_CACHE_DIR: model cache for built-in models; default ~/.cache/tiffin/models."""
    url: str
    """TIFFIN_RUNNER_URL: the address registered for API servers; default http://HOST:PORT (loopback for a
    wildcard HOST), so set it when API servers run on other hosts (e.g. the pod IP in Kubernetes)."""
    drain_timeout_s: float
    """TIFFIN_RUNNER_DRAIN_TIMEOUT_S: on SIGTERM, how long the engine keeps serving requests already in flight
    (as API servers report them) after leaving the registry; default 60. Keep the orchestrator's grace period
    (Kubernetes' terminationGracePeriodSeconds) above this plus the engine's own stop time."""

    @classmethod
    def from_env(cls) -> RunnerSettings:
        host = env_str("TIFFIN_RUNNER_HOST", "127.0.0.1")
        port = env_int("TIFFIN_RUNNER_PORT", 8100)
        return cls(
            **_common(),
            host=host,
            port=port,
            cache_dir=default_cache_dir(),
            url=env_str("TIFFIN_RUNNER_URL", "") or local_url(host, port),
            drain_timeout_s=env_float("TIFFIN_RUNNER_DRAIN_TIMEOUT_S", 60.0),
        )

    @property
    def local_url(self) -> str:
        """Where this process reaches its own engine."""
        return local_url(self.host, self.port)


def local_url(host: str, port: int) -> str:
    """`http://host:port`, with a wildcard listen address reached on loopback."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
