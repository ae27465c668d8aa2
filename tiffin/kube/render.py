"""One deployment's Kubernetes objects: its config, pods, Services, model cache and KEDA ScaledObjects.

`render` is a pure function of the deployment and the platform it joins; the controller applies what it returns
(server-side apply), `tiffin render` writes it to files. Every object carries the labels in `labels()`, by which
the controller finds (and prunes) what belongs to a deployment.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tiffin.common.models import is_builtin
from tiffin.contracts.config import Deployment
from tiffin.contracts.config_kubernetes import is_label_value
from tiffin.contracts.exceptions import ConfigError
from tiffin.kube.pods import API_PORT, CONFIG_KEY, RUNNER_PORT, PodContext, api_pod, runner_pod

Manifest = dict[str, Any]

PLATFORM_IMAGE = "tiffin/platform:0.1.0"
RUNNER_IMAGE = "tiffin/runner:0.1.0"
DEPLOYMENT_LABEL = "tiffin.io/deployment"
COMPONENT_LABEL = "app.kubernetes.io/component"
CONFIG_HASH_ANNOTATION = "tiffin.io/config-sha256"
MAX_NAME = 63 - len("-runner")  # object names are NAME-api, NAME-runner, NAME-config, NAME-models
HPA_MAX_WINDOW_S = 3600  # the HorizontalPodAutoscaler refuses a longer stabilization window
COOLDOWN_S = 15
"""The ScaledObjects' cooldownPeriod: KEDA waits this long after the scaler last said active before scaling to
zero. Short and fixed because the scaler's IsActive already stays true for `scaling.idle_period_s` after the
last request (tiffin.contracts.demand); a cooldown of the idle period would count it twice."""


class RenderError(ConfigError):
    """A deployment that is valid YAML but cannot run on Kubernetes; `problems` lists `field: problem` lines."""


@dataclass(frozen=True)
class Platform:
    """The cluster side a deployment joins: namespace, images, the scaler's address and Redis's Secret."""

    namespace: str = "tiffin"
    image: str = PLATFORM_IMAGE
    """Image of the API server and its proxy (the platform image)."""
    runner_image: str = RUNNER_IMAGE
    """Image of the runner (vLLM with tiffin's runner supervisor)."""
    scaler_address: str = "tiffin-scaler.tiffin.svc.cluster.local:9090"
    """host:port of tiffin's scaler (gRPC), as KEDA's operator reaches it."""
    redis_secret: str = "tiffin-redis"
    """Secret whose key `url` holds REDIS_URL."""
    uid: int = 10001
    """User and group id the containers run as (the images' non-root user)."""
    gpu_node_label: str = "nvidia.com/gpu.product"
    """Node label whose value `runner.gpu_type` selects (NVIDIA's GPU feature discovery sets this one)."""
    polling_interval_s: int = 15
    """How often KEDA asks the scaler for metrics (activation is pushed at once, not polled)."""
    metrics_namespace: str | None = None
    """Namespace of the Prometheus that scrapes the pods' /metrics, let through the NetworkPolicies (None: none)."""


# What `render` may return, as (apiVersion, kind, plural): the kinds a controller lists to prune by label.
RENDERED_KINDS = [
    ("v1", "ConfigMap", "configmaps"),
    ("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    ("v1", "Service", "services"),
    ("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    ("apps/v1", "Deployment", "deployments"),
    ("keda.sh/v1alpha1", "ScaledObject", "scaledobjects"),
]


def labels(deployment: str, component: str | None = None) -> dict[str, str]:
    """The labels every object of `deployment` carries (with its component where it has one)."""
    out = {
        "app.kubernetes.io/name": "tiffin",
        "app.kubernetes.io/part-of": "tiffin",
        "app.kubernetes.io/managed-by": "tiffin",
        DEPLOYMENT_LABEL: deployment,
    }
    if component:
        out[COMPONENT_LABEL] = component
    return out


def selector(deployment: str, component: str) -> dict[str, str]:
    """The pod selector of one component (a subset of its labels that never changes: selectors are immutable)."""
    return {"app.kubernetes.io/name": "tiffin", DEPLOYMENT_LABEL: deployment, COMPONENT_LABEL: component}


def config_yaml(deployment: Deployment) -> str:
    """The deployment as YAML, for a ConfigMap when no source text is at hand (the controller's case)."""
    return yaml.safe_dump(deployment.model_dump(mode="json", by_alias=True), sort_keys=False)


def problems(deployment: Deployment, model: str | None = None) -> list[str]:
    """What stops a valid deployment from running on Kubernetes, as `field: problem` lines (none: it can)."""
    out: list[str] = []
    name = deployment.name
    if len(name) > MAX_NAME:
        out.append(f"name: '{name}' has {len(name)} characters; on Kubernetes at most {MAX_NAME} "
                   f"(objects are named {name}-runner and so on)")  # fmt: skip
    model = deployment.model if model is None else model
    if not is_builtin(model) and not Path(model).is_absolute():
        out.append(f"model: '{model}' is a relative folder; on Kubernetes name a built-in model (smollm2) or an "
                   "absolute folder inside the runner, such as /models/NAME on the model cache")  # fmt: skip
    gpu_type = deployment.runner.gpu_type
    if gpu_type is not None and not is_label_value(gpu_type):
        out.append(f"runner.gpu_type: '{gpu_type}' is not a valid node label value (at most 63 letters, digits, "
                   "'-', '_' or '.')")  # fmt: skip
    if gpu_type and not deployment.runner.gpus:
        out.append("runner.gpu_type: set while runner.gpus is 0; ask for at least one GPU (runner.gpus: 1)")
    if deployment.scaling.scale_down_window_s > HPA_MAX_WINDOW_S:
        out.append(f"scaling.scale_down_window_s: {deployment.scaling.scale_down_window_s:g} is above "
                   f"{HPA_MAX_WINDOW_S}, the longest window Kubernetes' HorizontalPodAutoscaler takes")  # fmt: skip
    return out


def render(deployment: Deployment, platform: Platform, source_yaml: str | None = None) -> list[Manifest]:
    """Every object of one deployment, in apply order; raises `RenderError` when it cannot run on Kubernetes.

    `source_yaml` is the deployment's file as written (kept, comments and all, in its ConfigMap); without it the
    ConfigMap holds the deployment dumped as YAML.
    """
    text = config_yaml(deployment) if source_yaml is None else source_yaml
    model = _model_in(text)
    found = problems(deployment, model)
    if found:
        raise RenderError(found)
    name, ns = deployment.name, platform.namespace
    cache = deployment.kubernetes.model_cache
    ctx = PodContext(
        image=platform.image,
        runner_image=platform.runner_image,
        redis_secret=platform.redis_secret,
        uid=platform.uid,
        config_map=f"{name}-config",
        config_hash=hashlib.sha256(text.encode()).hexdigest(),
        models_claim=cache.claim or f"{name}-models",
    )
    objects: list[Manifest] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(ctx.config_map, ns, name),
            "data": {CONFIG_KEY: text},
        }
    ]
    if cache.claim is None:
        claim: Manifest = {"accessModes": [cache.access_mode], "resources": {"requests": {"storage": cache.size}}}
        if cache.storage_class:
            claim["storageClassName"] = cache.storage_class
        objects.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": _meta(ctx.models_claim, ns, name, "runner"), "spec": claim})  # fmt: skip
    objects += [_service(name, ns, "api", API_PORT), _service(name, ns, "runner", RUNNER_PORT)]
    objects += [_network_policy(name, platform, "api"), _network_policy(name, platform, "runner")]
    # Runners never surge: a second GPU (or a second attach of a ReadWriteOnce cache) may not exist. Requests
    # wait in the queue while a runner is replaced.
    runner_strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    objects += [
        _deployment(name, ns, "api", api_pod(ctx, deployment), ctx.config_hash, None),
        _deployment(
            name, ns, "runner", runner_pod(ctx, deployment, platform.gpu_node_label), ctx.config_hash, runner_strategy
        ),
    ]
    objects += [_scaled_object(deployment, platform, "api"), _scaled_object(deployment, platform, "runner")]
    return objects


def notes(deployment: Deployment) -> list[str]:
    """Advice on a deployment that renders but may not behave as its author expects on a cluster."""
    cache = deployment.kubernetes.model_cache
    if cache.claim is None and cache.access_mode != "ReadWriteMany" and deployment.runner.max_replicas > 1:
        limit = "one node" if cache.access_mode == "ReadWriteOnce" else "one pod"
        return [f"kubernetes.model_cache.access_mode: {cache.access_mode} with runner.max_replicas "
                f"{deployment.runner.max_replicas}: only runners on {limit} can mount the cache; use "
                "ReadWriteMany (or a claim of that mode) to spread runners over nodes"]  # fmt: skip
    return []


def _model_in(text: str) -> str | None:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RenderError([f"(top level): the source YAML does not parse: {exc}"]) from exc
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else None


def _meta(name: str, namespace: str, deployment: str, component: str | None = None) -> Manifest:
    return {"name": name, "namespace": namespace, "labels": labels(deployment, component)}


def _service(deployment: str, namespace: str, component: str, port: int) -> Manifest:
    # For Prometheus (/metrics) and people debugging; requests reach pods through Redis and the registry.
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(f"{deployment}-{component}", namespace, deployment, component),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(deployment, component),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _network_policy(deployment: str, platform: Platform, component: str) -> Manifest:
    """Neither the API server nor the engine asks for an API key: only the API servers of this deployment may
    reach its runners, and nothing from other pods reaches an API server (its proxy calls it inside the pod).
    The kubelet's probes come from the node, which NetworkPolicies always let through."""
    sources: list[Manifest] = []
    if component == "runner":
        sources.append({"podSelector": {"matchLabels": selector(deployment, "api")}})
    if platform.metrics_namespace:
        namespace = {"matchLabels": {"kubernetes.io/metadata.name": platform.metrics_namespace}}
        sources.append({"namespaceSelector": namespace, "podSelector": {}})
    ingress = [{"from": sources, "ports": [{"port": "http", "protocol": "TCP"}]}] if sources else []
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(f"{deployment}-{component}", platform.namespace, deployment, component),
        "spec": {
            "podSelector": {"matchLabels": selector(deployment, component)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def _deployment(
    deployment: str, namespace: str, component: str, pod: Manifest, config_hash: str, strategy: Manifest | None
) -> Manifest:
    spec: Manifest = {
        # No `replicas`: KEDA's HorizontalPodAutoscaler is the one writer of that field.
        "revisionHistoryLimit": 3,
        "selector": {"matchLabels": selector(deployment, component)},
        "template": {
            # The config's hash rolls the pods when the YAML changes: they read it only at start.
            "metadata": {"labels": labels(deployment, component), "annotations": {CONFIG_HASH_ANNOTATION: config_hash}},
            "spec": pod,
        },
    }
    if strategy is not None:
        spec["strategy"] = strategy
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(f"{deployment}-{component}", namespace, deployment, component),
        "spec": spec,
    }


def _scaled_object(deployment: Deployment, platform: Platform, component: str) -> Manifest:
    """KEDA scales one component from the scaler's pushed activity and its metric (see scaler/service.py)."""
    name = deployment.name
    section = deployment.component(component)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _meta(f"{name}-{component}", platform.namespace, name, component),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{name}-{component}"},
            "minReplicaCount": section.min_replicas,
            "maxReplicaCount": section.max_replicas,
            "cooldownPeriod": COOLDOWN_S,
            "pollingInterval": platform.polling_interval_s,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleDown": {"stabilizationWindowSeconds": math.ceil(deployment.scaling.scale_down_window_s)}
                    }
                }
            },
            "triggers": [
                {
                    "type": "external-push",
                    "metadata": {"scalerAddress": platform.scaler_address, "deployment": name, "component": component},
                }
            ],
        },
    }
