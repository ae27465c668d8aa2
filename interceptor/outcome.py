"""What a request came to at the edge, and where that is reported: metrics, the dashboard's history, the log."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog

from interceptor import metrics
from tiffin.contracts.coldstart import ColdStart
from tiffin.contracts.history import TrafficRecorder

log = structlog.get_logger("interceptor")


@dataclass
class Outcome:
    """What the per-request log line and metrics report."""

    request_id: str
    client: str = "-"
    """The client's address (after trusted proxies)."""
    deployment: str = "-"
    status: int = 0
    queue_ms: float | None = None
    cold_start_ms: int | None = None
    """Set for a request that found the deployment cold: enqueue until its head frame."""
    cold_start: ColdStart | None = None
    """The cold start this request woke the deployment for, recorded when its head came."""
    started: float = field(default_factory=time.monotonic)
    detail: str | None = None
    delivered: bool = False
    """The client has the whole answer (an SSE stream's `[DONE]` went out), even if it hangs up first."""
    sent: bool = False
    """The response's last byte went out (or its cut was made on purpose): a cancellation after it changes nothing."""
    key_id: str | None = None
    """The id of the valid API key the request carried (never the key)."""
    error: str | None = None
    """The error code that ended a stream after its head (`detail` is then `stream_broken`)."""
    enqueued: float | None = None
    """When it was enqueued (monotonic): with `queue_ms`, where the upstream time starts."""

    @property
    def failed(self) -> bool:
        """Counted as an error in the dashboard's history: a status >= 500, or a stream broken after its head."""
        return self.status >= 500 or self.error is not None


def report(outcome: Outcome, history: TrafficRecorder) -> None:
    """Count a finished request in the metrics and the dashboard's history, and write its log line."""
    total = time.monotonic() - outcome.started
    metrics.child(metrics.REQUESTS, outcome.deployment, str(outcome.status)).inc()
    if outcome.deployment != "-":
        metrics.child(metrics.DURATION, outcome.deployment).observe(total)
        if outcome.queue_ms is not None:
            metrics.child(metrics.QUEUE_WAIT, outcome.deployment).observe(outcome.queue_ms / 1000)
        if outcome.cold_start_ms is not None:
            metrics.COLD_START_WAIT.labels(outcome.deployment).observe(outcome.cold_start_ms / 1000)
    upstream_s = None
    if outcome.queue_ms is not None and outcome.enqueued is not None:
        # From a replica taking it (enqueue + its queue wait) to the last byte, which is now: the same measure
        # in the log line, the histogram and the dashboard's history.
        upstream_s = max(0.0, time.monotonic() - outcome.enqueued - outcome.queue_ms / 1000)
    upstream_ms = None if upstream_s is None else round(upstream_s * 1000, 1)
    if outcome.deployment != "-":
        if upstream_s is not None:
            metrics.child(metrics.UPSTREAM, outcome.deployment).observe(upstream_s)
        queue_s = None if outcome.queue_ms is None else outcome.queue_ms / 1000
        history.observe(outcome.deployment, outcome.failed, queue_s, upstream_s)
    log.info(
        "request",
        deployment=outcome.deployment,
        request_id=outcome.request_id,
        key_id=outcome.key_id,
        client=outcome.client,
        status=outcome.status,
        queue_wait_ms=outcome.queue_ms,
        cold_start_ms=outcome.cold_start_ms,
        upstream_ms=upstream_ms,
        total_ms=round(total * 1000, 1),
        detail=outcome.detail,
        error=outcome.error,
    )


def observe_cold_start(deployment: str, record: ColdStart | None) -> None:
    """Count a cold start this interceptor ended (each is ended once, by its waking request): its outcome, and for
    a finished one its total and phases."""
    if record is None:
        return
    metrics.COLD_STARTS.labels(deployment, record.outcome).inc()
    if record.total_ms is None:
        return
    metrics.COLD_START.labels(deployment).observe(record.total_ms / 1000)
    for phase, ms in record.phases.items():
        metrics.COLD_START_PHASE.labels(deployment, phase).observe(ms / 1000)
