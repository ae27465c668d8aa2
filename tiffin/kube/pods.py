"""Pod templates of one deployment: the API server with its proxy sidecar, and the runner.

Both run as a non-root user on a read-only root filesystem; what must be writable is an emptyDir (/tmp, the
engine's /dev/shm) or the model cache (/models). The deployment's YAML is mounted from its ConfigMap, so every
container reads it through TIFFIN_CONFIG and TIFFIN_DEPLOYMENT exactly as it does under `tiffin up`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tiffin.contracts.config import Deployment
from tiffin.contracts.config_kubernetes import Compute, Resources, quantity_value

Manifest = dict[str, Any]

API_PORT = 8000
RUNNER_PORT = 8100
CONFIG_DIR = "/etc/tiffin"
CONFIG_KEY = "deployment.yaml"
MODELS_DIR = "/models"
GPU_RESOURCE = "nvidia.com/gpu"

# Shutdown budgets, kept in step with the components' own defaults (set explicitly below, so they cannot drift
# apart from the grace periods computed from them).
PROXY_DRAIN_S = 120  # proxy: TIFFIN_DRAIN_TIMEOUT_S, in-flight requests finishing after SIGTERM
API_SHUTDOWN_S = 30  # runtime/api: aiohttp's shutdown_timeout, twice
RUNNER_DRAIN_S = 60  # runtime/runner: TIFFIN_RUNNER_DRAIN_TIMEOUT_S
ENGINE_STOP_S = 30  # runtime/runner: the engine's stop grace after the drain
MARGIN_S = 15
RUNNER_PROBE_PERIOD_S = 10

# The API server must outlive its proxy: the proxy drains requests through it. With a shared process namespace
# the API container's preStop hook sees the proxy's process and returns (letting SIGTERM reach the API server)
# only once the proxy has drained and exited; the kubelet's grace period bounds the wait.
_WAIT_FOR_PROXY = """import os, time
def proxy_alive():
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"-m\\x00proxy\\x00" in f.read():
                    return True
        except OSError:
            pass
    return False
while proxy_alive():
    time.sleep(1)
"""

_DEFAULTS: dict[str, tuple[Compute, Compute]] = {  # (requests, limits) when the YAML leaves them out
    "api": (Compute(cpu="250m", memory="256Mi"), Compute(cpu="1", memory="1Gi")),
    "proxy": (Compute(cpu="100m", memory="128Mi"), Compute(cpu="500m", memory="512Mi")),
    "runner-cpu": (Compute(cpu="2", memory="4Gi"), Compute(cpu="4", memory="8Gi")),
    "runner-gpu": (Compute(cpu="4", memory="16Gi"), Compute(cpu="8", memory="32Gi")),
}


@dataclass(frozen=True)
class PodContext:
    """What every pod of a deployment shares: images, Redis's Secret, the user id, the config's hash."""

    image: str
    runner_image: str
    redis_secret: str
    uid: int
    config_map: str
    config_hash: str
    models_claim: str


def resources(given: Resources, defaults: str, extra_limits: dict[str, str] | None = None) -> Manifest:
    """The YAML's requests and limits over tiffin's defaults; a default limit below a given request is raised."""
    default_requests, default_limits = _DEFAULTS[defaults]
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    for what in ("cpu", "memory"):
        request = getattr(given.requests, what) or getattr(default_requests, what)
        limit = getattr(given.limits, what) or getattr(default_limits, what)
        if quantity_value(request) > quantity_value(limit):
            if getattr(given.limits, what) is None:
                limit = request
            else:
                request = limit
        requests[what], limits[what] = request, limit
    for name, value in (extra_limits or {}).items():
        requests[name] = limits[name] = value  # extended resources (GPUs): requests must equal limits
    return {"requests": requests, "limits": limits}


def _security() -> Manifest:
    return {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _http_probe(port: str, period: int, failures: int, timeout: int = 3) -> Manifest:
    return {
        "httpGet": {"path": "/health", "port": port},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _env(ctx: PodContext, dep: Deployment, **extra: str) -> list[Manifest]:
    env: list[Manifest] = [
        {"name": "TIFFIN_CONFIG", "value": f"{CONFIG_DIR}/{CONFIG_KEY}"},
        {"name": "TIFFIN_DEPLOYMENT", "value": dep.name},
        {"name": "REDIS_URL", "valueFrom": {"secretKeyRef": {"name": ctx.redis_secret, "key": "url"}}},
        {"name": "HOME", "value": "/tmp"},  # caches of Python libraries go to the writable emptyDir
    ]
    return env + [{"name": name, "value": value} for name, value in extra.items()]


def _mounts(*extra: tuple[str, str]) -> list[Manifest]:
    mounts: list[Manifest] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    return mounts + [{"name": name, "mountPath": path} for name, path in extra]


def _pod_spec(
    ctx: PodContext, containers: list[Manifest], grace_s: int, volumes: list[Manifest], tmp_size: str = "1Gi"
) -> Manifest:
    return {
        "automountServiceAccountToken": False,  # no pod of a deployment talks to the Kubernetes API
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": ctx.uid,
            "runAsGroup": ctx.uid,
            "fsGroup": ctx.uid,
            "fsGroupChangePolicy": "OnRootMismatch",  # a large model cache is not walked on every start
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": grace_s,
        "containers": containers,
        "volumes": [
            {"name": "config", "configMap": {"name": ctx.config_map}},
            {"name": "tmp", "emptyDir": {"sizeLimit": tmp_size}},
            *volumes,
        ],
    }


def _placement(spec: Manifest, node_selector: dict[str, str], tolerations: list[Manifest]) -> Manifest:
    if node_selector:
        spec["nodeSelector"] = dict(sorted(node_selector.items()))
    if tolerations:
        spec["tolerations"] = tolerations
    return spec


def _tolerations(dep: Deployment, component: str) -> list[Manifest]:
    pod = dep.kubernetes.api if component == "api" else dep.kubernetes.runner
    return [t.model_dump(by_alias=True, exclude_none=True) for t in pod.tolerations]


def api_pod(ctx: PodContext, dep: Deployment) -> Manifest:
    """The API server (port 8000, probed on /health) and its proxy sidecar, which feeds it from the queue."""
    k8s = dep.kubernetes.api
    image = k8s.image or ctx.image
    api = {
        "name": "api",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-m", "runtime.api"],
        # Probes reach the pod's address, so the API server listens on every address of the pod. Requests come
        # only from the proxy beside it; nothing routes to it from outside the pod.
        "env": _env(ctx, dep, TIFFIN_API_HOST="0.0.0.0", TIFFIN_API_PORT=str(API_PORT), TIFFIN_CHECK_MODEL_FOLDERS="0"),
        "ports": [{"name": "http", "containerPort": API_PORT, "protocol": "TCP"}],
        "startupProbe": _http_probe("http", 2, 60),
        "readinessProbe": _http_probe("http", 5, 3),
        "livenessProbe": _http_probe("http", 10, 6, timeout=5),
        "lifecycle": {"preStop": {"exec": {"command": ["python3", "-c", _WAIT_FOR_PROXY]}}},
        "resources": resources(k8s.resources, "api"),
        "securityContext": _security(),
        "volumeMounts": _mounts(),
    }
    proxy = {
        "name": "proxy",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-m", "proxy"],
        # No TIFFIN_REPLICA_ID: each start of the proxy takes a fresh consumer name (host-pid-random), so a
        # restarted container never inherits the requests its dead predecessor held.
        "env": _env(
            ctx,
            dep,
            TIFFIN_UPSTREAM_URL=f"http://127.0.0.1:{API_PORT}",
            TIFFIN_DRAIN_TIMEOUT_S=str(PROXY_DRAIN_S),
            TIFFIN_CHECK_MODEL_FOLDERS="0",
        ),
        "resources": resources(k8s.proxy_resources, "proxy"),
        "securityContext": _security(),
        "volumeMounts": _mounts(),
    }
    spec = _pod_spec(ctx, [proxy, api], PROXY_DRAIN_S + API_SHUTDOWN_S + MARGIN_S, [])
    spec["shareProcessNamespace"] = True  # for the API server's preStop hook (above)
    return _placement(spec, k8s.node_selector, _tolerations(dep, "api"))


def runner_pod(ctx: PodContext, dep: Deployment, gpu_node_label: str) -> Manifest:
    """The runner supervisor and its engine (port 8100), on GPUs when `runner.gpus` asks for them."""
    k8s = dep.kubernetes.runner
    gpus = dep.runner.gpus
    # The runner counts its own startup_timeout_s from its start (model resolution included) and exits when it
    # runs out; the kubelet's startup probe waits a minute longer, so the runner's own clearer error comes first.
    startup_failures = math.ceil((dep.runner.startup_timeout_s + 60) / RUNNER_PROBE_PERIOD_S)
    env = _env(
        ctx, dep,
        TIFFIN_RUNNER_HOST="0.0.0.0", TIFFIN_RUNNER_PORT=str(RUNNER_PORT),
        TIFFIN_RUNNER_URL=f"http://$(POD_IP):{RUNNER_PORT}",  # what API servers in other pods call
        TIFFIN_RUNNER_DRAIN_TIMEOUT_S=str(RUNNER_DRAIN_S),
        TIFFIN_CACHE_DIR=MODELS_DIR, HF_HOME=f"{MODELS_DIR}/.huggingface",
        # vLLM's compiled kernels kept beside the weights: the next cold start of the model reuses them.
        VLLM_CACHE_ROOT=f"{MODELS_DIR}/.vllm",
        VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
    )  # fmt: skip
    env.insert(0, {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    runner = {
        "name": "runner",
        "image": k8s.image or ctx.runner_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-m", "runtime.runner"],
        "env": env,
        "ports": [{"name": "http", "containerPort": RUNNER_PORT, "protocol": "TCP"}],
        "startupProbe": _http_probe("http", RUNNER_PROBE_PERIOD_S, startup_failures, timeout=5),
        "readinessProbe": _http_probe("http", RUNNER_PROBE_PERIOD_S, 3, timeout=5),  # vLLM's /health
        "livenessProbe": _http_probe("http", 30, 4, timeout=10),
        "resources": resources(
            k8s.resources, "runner-gpu" if gpus else "runner-cpu", {GPU_RESOURCE: str(gpus)} if gpus else None
        ),
        "securityContext": _security(),
        "volumeMounts": _mounts(("models", MODELS_DIR), ("shm", "/dev/shm")),
    }
    volumes = [
        {"name": "models", "persistentVolumeClaim": {"claimName": ctx.models_claim}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": k8s.shm_size}},  # vLLM's workers share it
    ]
    grace = RUNNER_DRAIN_S + ENGINE_STOP_S + MARGIN_S
    spec = _pod_spec(ctx, [runner], grace, volumes, tmp_size="4Gi")  # engines unpack and compile under /tmp
    node_selector = dict(k8s.node_selector)
    tolerations = _tolerations(dep, "runner")
    if dep.runner.gpu_type:
        node_selector.setdefault(gpu_node_label, dep.runner.gpu_type)
    if gpus:
        # GPU nodes are commonly tainted so that only pods asking for GPUs land there.
        gpu_taint = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        if gpu_taint not in tolerations:
            tolerations.append(gpu_taint)
    return _placement(spec, node_selector, tolerations)
