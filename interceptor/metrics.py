"""The interceptor's Prometheus metrics, on its own registry (served on the admin port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tiffin.common.metric_children import Children

REGISTRY = CollectorRegistry()

_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

REQUESTS = Counter(
    "tiffin_requests", "Requests answered, by deployment and HTTP status.", ["deployment", "status"],
    registry=REGISTRY,
)  # fmt: skip
IN_PROGRESS = Gauge(
    "tiffin_requests_in_progress", "Requests being waited on or relayed.", ["deployment"], registry=REGISTRY
)
QUEUE_WAIT = Histogram(
    "tiffin_queue_wait_seconds", "Time from enqueue until a replica took the request.", ["deployment"],
    buckets=_WAIT_BUCKETS, registry=REGISTRY,
)  # fmt: skip
DURATION = Histogram(
    "tiffin_request_duration_seconds", "Time from arrival until the last reply byte.", ["deployment"],
    buckets=_WAIT_BUCKETS, registry=REGISTRY,
)  # fmt: skip
UPSTREAM = Histogram(
    "tiffin_upstream_seconds", "Time from a replica taking the request until its last reply byte.", ["deployment"],
    buckets=_WAIT_BUCKETS, registry=REGISTRY,
)  # fmt: skip
COLD_START_WAIT = Histogram(
    "tiffin_cold_start_wait_seconds",
    "Time from enqueue until the reply started, for requests that found the deployment cold.",
    ["deployment"], buckets=_WAIT_BUCKETS, registry=REGISTRY,
)  # fmt: skip
COLD_START = Histogram(
    "tiffin_cold_start_seconds",
    "Finished cold starts: from the arrival of the request that woke the deployment to its reply's first byte.",
    ["deployment"], buckets=_WAIT_BUCKETS, registry=REGISTRY,
)  # fmt: skip
COLD_START_PHASE = Histogram(
    "tiffin_cold_start_phase_seconds",
    "Finished cold starts: from the waking request's arrival to each phase (activated, replica_started, api_ready, "
    "engine_ready, dispatched, first_byte), for the phases seen.",
    ["deployment", "phase"], buckets=_WAIT_BUCKETS, registry=REGISTRY,
)  # fmt: skip
COLD_STARTS = Counter(
    "tiffin_cold_starts", "Cold starts ended, by outcome: ok (the waking request got its reply) or failed.",
    ["deployment", "outcome"], registry=REGISTRY,
)  # fmt: skip
WITHDRAWN = Counter(
    "tiffin_requests_withdrawn", "Queued requests withdrawn because their interceptor died or their wait ran out.",
    ["deployment", "reason"], registry=REGISTRY,
)  # fmt: skip
REJECTED = Counter(
    "tiffin_rejected",
    "Requests and connections the edge refused before queueing, by deployment ('-' when not yet known) and reason.",
    ["deployment", "reason"], registry=REGISTRY,
)  # fmt: skip
STREAMS_BROKEN = Counter(
    "tiffin_streams_broken",
    "Answers cut short after their head went out (the client got an error event or an incomplete body), by "
    "deployment and the error that ended them; tiffin_requests_total counts them under the status they began with.",
    ["deployment", "error"], registry=REGISTRY,
)  # fmt: skip


child = Children()
"""The per-request metrics' children, looked up once (`metrics.child(metrics.REQUESTS, deployment, status)`)."""
