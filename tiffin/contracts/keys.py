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


QUEUE_PATTERN = f"{PREFIX}:q:*"
"""Every deployment's queue (each interceptor creates its deployments' queues at start): who ever ran here."""


def reply(interceptor_id: str) -> str:
    """One reply stream per interceptor; proxies append frames, the interceptor's reader loop reads them."""
    return f"{PREFIX}:reply:{interceptor_id}"


def request(request_id: str) -> str:
    """Hash holding one request's state (queued, taken, started, cancelled); expires with the request."""
    return f"{PREFIX}:req:{request_id}"


def result(request_id: str) -> str:
    """Hash of a request's whole non-streamed answer (status, headers, body), written by the API server before it
    replies: a replica that takes the request again answers from it instead of running it at a runner twice."""
    return f"{PREFIX}:result:{request_id}"


def replicas(deployment: str, component: Component) -> str:
    """Sorted set of ready replica ids, scored by the epoch-ms at which their heartbeat lapses."""
    return f"{PREFIX}:replicas:{deployment}:{component}"


def replica_info(deployment: str, component: Component) -> str:
    """Hash of replica id -> JSON description (url, concurrency, started_at)."""
    return f"{PREFIX}:replica-info:{deployment}:{component}"


WAKE_CHANNEL = f"{PREFIX}:wake"
"""Pub/sub channel: a deployment's name is published when a request is enqueued while it is not warm."""


def cancels(deployment: str) -> str:
    """Pub/sub channel: the id of a request of this deployment cancelled while a proxy held it (client gone),
    so the proxy stops its upstream call at once instead of at its next poll of the request state."""
    return f"{PREFIX}:cancels:{deployment}"


def activity(deployment: str) -> str:
    """Epoch-ms of the deployment's last enqueue or finished request: the idle period counts from here."""
    return f"{PREFIX}:activity:{deployment}"


def waking(deployment: str) -> str:
    """Set (NX, expiring) by the request that found the deployment cold: the start of a cold start."""
    return f"{PREFIX}:waking:{deployment}"


def cold_start(deployment: str) -> str:
    """Hash of the last finished cold start: duration_ms, at_ms."""
    return f"{PREFIX}:cold-start:{deployment}"


def cold_start_phases(deployment: str) -> str:
    """Hash of the cold start under way: rid (the waking request), arrived and each phase seen -> epoch-ms
    (Redis's clock); made with the waking mark, expiring with it, folded into `cold_starts` when it ends."""
    return f"{PREFIX}:cold-start-phases:{deployment}"


def cold_starts(deployment: str) -> str:
    """List of the last cold starts' records (JSON, see `tiffin.contracts.coldstart.ColdStart`), newest first,
    bounded."""
    return f"{PREFIX}:cold-starts:{deployment}"


def runner_load(deployment: str) -> str:
    """Sorted set of API server replica ids reporting runner load, scored by the epoch-ms their report lapses."""
    return f"{PREFIX}:runner-load:{deployment}"


def runner_load_values(deployment: str) -> str:
    """Hash of API server replica id -> JSON runner load report (see `tiffin.contracts.load.LoadReport`)."""
    return f"{PREFIX}:runner-load-values:{deployment}"


def desired(deployment: str) -> str:
    """Hash of component -> replica count wanted, written only by the single scaling writer (+ updated_ms)."""
    return f"{PREFIX}:desired:{deployment}"


def cluster_ready(deployment: str) -> str:
    """Hash of component -> ready replicas as a cluster platform reports them (Kubernetes' readyReplicas,
    written by the controller) + updated_ms; absent under `tiffin up`, whose replicas are its own processes."""
    return f"{PREFIX}:cluster-ready:{deployment}"


def sleep(deployment: str) -> str:
    """Present while the deployment's runners should sleep (the GPU sleeping tier, `scaling.sleep_period_s`):
    set by the single scaling writer when they would go to zero, deleted to wake them (or before they stop)."""
    return f"{PREFIX}:sleep:{deployment}"


RUNNER_POOL = f"{PREFIX}:runner-pool"
"""Hash of the single-machine runner pool (tiffin up): state (starting, ready, down), rss_bytes, pss_bytes, pid,
runners_started, plain_fallbacks, restarts, updated_ms. Refreshed every 5 s, expires after 15 s: no pool, no key."""


# --- API keys (tiffin.contracts.apikeys): stored as hashes only, never the key itself ---------------------------------

API_KEY_IDS = f"{PREFIX}:apikeys"
"""Set of every API key id: the index `tiffin keys list` and the interceptors' reload read."""

API_KEYS_GENERATION = f"{PREFIX}:apikeys:generation"
"""A fresh random token on every create or revoke: interceptors poll it and reload the keys when it changes."""

API_KEYS_LAST_USED = f"{PREFIX}:apikeys:last-used"
"""Hash of key id -> epoch-ms of its last accepted request (written by the per-key limit script)."""


def api_key(key_id: str) -> str:
    """Hash of one API key: SHA-256 of its secret, deployments, label, created time, its own limits."""
    return f"{PREFIX}:apikey:{key_id}"


def key_rate(key_id: str, deployment: str) -> str:
    """One key's rate state on one deployment (GCRA: the theoretical arrival time, epoch-ms); expires."""
    return f"{PREFIX}:key-rate:{key_id}:{deployment}"


def key_slots(key_id: str, deployment: str) -> str:
    """Sorted set of one key's requests in progress on one deployment, scored by lease expiry (epoch-ms)."""
    return f"{PREFIX}:key-slots:{key_id}:{deployment}"


# --- dashboard history (tiffin.contracts.history): one expiring hash per step, so nothing outlives the window -----


def history_step(deployment: str, step_s: int) -> str:
    """Hash of one 10 s step (epoch seconds of its start): replica counts, request and error counts, and
    queue-wait and upstream histogram bucket counts; expires once the step leaves the one-hour window."""
    return f"{history_steps(deployment)}{step_s}"


def history_steps(deployment: str) -> str:
    """What every step hash's name of the deployment starts with (the step's start follows): the dashboard's
    read scripts make the hour's 360 names themselves instead of sending them."""
    return f"{PREFIX}:history:{deployment}:10s:"


def history_minute(deployment: str, minute_s: int) -> str:
    """Hash of one minute (epoch seconds of its start): requests and runners ready, for the overview's
    sparklines (a minute per point keeps the 50-deployment overview cheap); expires with the window."""
    return f"{history_minutes(deployment)}{minute_s}"


def history_minutes(deployment: str) -> str:
    """What every minute hash's name of the deployment starts with (the minute's start follows)."""
    return f"{PREFIX}:history:{deployment}:1m:"


def app_openapi(deployment: str) -> str:
    """String: the OpenAPI description of the deployment's application (JSON), written by whoever loaded it last
    (`tiffin up` at start, each API server at start); the interceptor serves it with the docs page."""
    return f"{PREFIX}:app-openapi:{deployment}"
