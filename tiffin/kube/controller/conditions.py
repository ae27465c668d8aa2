"""The TiffinDeployment's status: `Applied` and `Ready` conditions, observedGeneration, replica counts.

Conditions follow Kubernetes' own shape (metav1.Condition): type, status "True"/"False", reason (CamelCase),
message, observedGeneration and lastTransitionTime, which moves only when the status flips, so rewriting an
unchanged status is a no-op for the API server (no new resourceVersion, no watch event back to us).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tiffin.contracts import keys


@dataclass(frozen=True)
class Counts:
    """One component's replicas as the cluster reports them: wanted (spec.replicas) and ready."""

    desired: int
    ready: int


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    kind: str, ok: bool, reason: str, message: str, generation: int, previous: list[dict[str, Any]]
) -> dict[str, Any]:
    """One condition; keeps the previous lastTransitionTime while its status is unchanged."""
    status = "True" if ok else "False"
    before = next((c for c in previous if c.get("type") == kind), None)
    since = before["lastTransitionTime"] if before and before.get("status") == status else now_rfc3339()
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    }


def ready_condition(
    applied: dict[str, Any],
    counts: dict[keys.Component, Counts],
    generation: int,
    previous: list[dict[str, Any]],
    left_out: str | None = None,
) -> dict[str, Any]:
    """Ready: applied, served by the interceptors (not `left_out` of their deployments ConfigMap, whose reason it
    is), and every component has as many ready replicas as it wants (zero wanted is ready)."""
    if applied["status"] != "True":
        return condition("Ready", False, applied["reason"], applied["message"], generation, previous)
    if left_out is not None:
        return condition("Ready", False, "RouteTaken", left_out, generation, previous)
    missing = [c for c in keys.COMPONENTS if c not in counts]
    if missing:
        return condition("Ready", False, "WorkloadsMissing", f"no Deployment for {', '.join(missing)} yet",
                         generation, previous)  # fmt: skip
    summary = ", ".join(f"{c} {counts[c].ready}/{counts[c].desired} ready" for c in keys.COMPONENTS)
    if any(counts[c].ready < counts[c].desired for c in keys.COMPONENTS):
        return condition("Ready", False, "ReplicasStarting", summary, generation, previous)
    at_zero = all(counts[c].desired == 0 for c in keys.COMPONENTS)
    reason = "ScaledToZero" if at_zero else "ReplicasReady"
    message = "no replicas wanted; the first request wakes it" if at_zero else summary
    return condition("Ready", True, reason, message, generation, previous)


def status_body(
    generation: int,
    applied: dict[str, Any],
    counts: dict[keys.Component, Counts],
    previous: list[dict[str, Any]],
    left_out: str | None = None,
) -> dict[str, Any]:
    """The whole status subresource the controller writes."""
    return {
        "observedGeneration": generation,
        "conditions": [applied, ready_condition(applied, counts, generation, previous, left_out)],
        "replicas": {c: {"desired": n.desired, "ready": n.ready} for c, n in sorted(counts.items())},
    }
