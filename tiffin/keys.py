"""Redis key names: the one place they are spelled. Every component imports them from here."""

from __future__ import annotations

from typing import Literal

PREFIX = "tiffin"
GROUP = "proxies"
"""Consumer group on every deployment queue; each proxy sidecar is one consumer."""

Component = Literal["api", "runner"]
COMPONENTS: tuple[Component, ...] = ("api", "runner")


def queue(deployment: str) -> str:
    """Stream of request envelopes waiting for (or being served by) the deployment's API servers."""
    return f"{PREFIX}:q:{deployment}"


def reply(interceptor_id: str) -> str:
    """One reply stream per interceptor; proxies append frames, the interceptor's reader loop reads them."""
    return f"{PREFIX}:reply:{interceptor_id}"


def request(request_id: str) -> str:
    """Hash holding one request's state (queued, taken, started, cancelled); expires with the request."""
    return f"{PREFIX}:req:{request_id}"


def replicas(deployment: str, component: Component) -> str:
    """Sorted set of ready replica ids, scored by the epoch-ms at which their heartbeat lapses."""
    return f"{PREFIX}:replicas:{deployment}:{component}"


def replica_info(deployment: str, component: Component) -> str:
    """Hash of replica id -> JSON description (url, concurrency, started_at)."""
    return f"{PREFIX}:replica-info:{deployment}:{component}"
