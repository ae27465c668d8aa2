"""Placeholder render (controller branch): the interface the controller calls, with a few simple objects.

The render branch owns the real module (API server with its proxy sidecar, runner, Services, ScaledObjects,
probes, security contexts); at merge its version replaces this one. Only the interface and the labels below
are relied on by the controller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from tiffin.contracts.config import Deployment

LABEL_DEPLOYMENT = "tiffin.io/deployment"
LABEL_COMPONENT = "app.kubernetes.io/component"


@dataclass(frozen=True)
class Platform:
    """Where the platform's shared parts are and which images run a deployment."""

    namespace: str = "tiffin"
    image: str = "tiffin/platform:0.1.0"
    runner_image: str = "tiffin/runner:0.1.0"
    scaler_address: str = "tiffin-scaler.tiffin.svc.cluster.local:9090"
    redis_secret: str = "tiffin-redis"


# What `render` may return, as (apiVersion, kind, plural): the kinds a controller lists to prune by label.
RENDERED_KINDS = [
    ("v1", "ConfigMap", "configmaps"),
    ("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    ("v1", "Service", "services"),
    ("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    ("apps/v1", "Deployment", "deployments"),
    ("keda.sh/v1alpha1", "ScaledObject", "scaledobjects"),
]


def labels(name: str, component: str | None = None) -> dict[str, str]:
    """The labels every rendered object carries (the controller prunes by them)."""
    out = {
        "app.kubernetes.io/name": "tiffin",
        "app.kubernetes.io/part-of": "tiffin",
        "app.kubernetes.io/managed-by": "tiffin",
        LABEL_DEPLOYMENT: name,
    }
    if component is not None:
        out[LABEL_COMPONENT] = component
    return out


def _meta(name: str, platform: Platform, deployment: str, component: str | None = None) -> dict[str, Any]:
    return {"name": name, "namespace": platform.namespace, "labels": labels(deployment, component)}


def _workload(deployment: Deployment, platform: Platform, component: str, image: str) -> list[dict[str, Any]]:
    name = f"{deployment.name}-{component}"
    selector = {LABEL_DEPLOYMENT: deployment.name, LABEL_COMPONENT: component}
    spec = deployment.component(component)
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(name, platform, deployment.name, component),
            # No `replicas`: KEDA's HPA owns that field; applying it would fight every scaling decision.
            "spec": {
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": labels(deployment.name, component)},
                    "spec": {"containers": [{"name": component, "image": image}]},
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(name, platform, deployment.name, component),
            "spec": {"selector": selector, "ports": [{"name": "http", "port": 8000}]},
        },
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": _meta(name, platform, deployment.name, component),
            "spec": {
                "scaleTargetRef": {"name": name},
                "minReplicaCount": spec.min_replicas,
                "maxReplicaCount": spec.max_replicas,
                "triggers": [
                    {
                        "type": "external-push",
                        "metadata": {
                            "scalerAddress": platform.scaler_address,
                            "deployment": deployment.name,
                            "component": component,
                        },
                    }
                ],
            },
        },
    ]


def render(deployment: Deployment, platform: Platform, source_yaml: str | None = None) -> list[dict[str, Any]]:
    """One deployment's manifests as plain dicts, in apply order."""
    source = source_yaml or yaml.safe_dump(deployment.model_dump(mode="json"), sort_keys=False)
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(f"{deployment.name}-config", platform, deployment.name),
        "data": {"deployment.yaml": source},
    }
    return [
        config,
        *_workload(deployment, platform, "api", platform.image),
        *_workload(deployment, platform, "runner", platform.runner_image),
    ]
