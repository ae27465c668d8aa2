"""The deployments ConfigMap: every valid TiffinDeployment's YAML, the folder the interceptor and scaler read.

The interceptor and the scaler load their deployment files once, at start, from the ConfigMap
`tiffin-deployments` mounted at TIFFIN_CONFIG. The controller is the one writer of its `data`: it
server-side-applies one key per valid TiffinDeployment (`NAME.yaml`, `render.config_yaml`) and, when the set
changes, stamps a hash of it on both Deployments' pod templates (annotation `tiffin.io/deployments-sha256`,
under a field manager of its own that owns nothing else), as `kubectl rollout restart` does. Their rolling
updates replace the pods one by one (a draining interceptor finishes its requests), and the new pods read the
new set. The hash depends only on the content, so a restarted controller stamps the same value: no roll.

A set the components could not load together would crash-loop them, so it is checked here first: a
deployment whose route another already takes (in name order) is left out, logged, and reported on its
resource (Ready False, reason RouteTaken) by the reconciler.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import structlog
import yaml

from tiffin.contracts.config import Deployment, conflicts, parse_deployment
from tiffin.contracts.exceptions import ConfigError
from tiffin.kube.controller.kubeapi import KubeApi, KubeApiError, Resource

log = structlog.get_logger("tiffin.kube.controller.catalog")

CONFIGMAP = "tiffin-deployments"
ROLLOUT = ("tiffin-interceptor", "tiffin-scaler")
ANNOTATION = "tiffin.io/deployments-sha256"
ROLLOUT_MANAGER = "tiffin-controller-rollout"


def digest(data: dict[str, str]) -> str:
    """The content hash stamped on the pod templates: the same set gives the same value, in any process."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def admissible(entries: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The ConfigMap data for `entries` (name -> YAML) the components can load together, and why each name left
    out is out."""
    accepted: list[tuple[Path, Deployment]] = []
    data: dict[str, str] = {}
    problems: dict[str, str] = {}
    for name in sorted(entries):
        path = Path(f"{name}.yaml")
        try:
            deployment = parse_deployment(yaml.safe_load(entries[name]), path, check_model=False)
        except (ConfigError, yaml.YAMLError) as exc:  # only a hand-edited ConfigMap carries such an entry
            problems[name] = str(exc)
            continue
        clash = conflicts([*accepted, (path, deployment)])
        if clash:
            problems[name] = "; ".join(c.removeprefix(f"{path}: ") for c in clash)
            continue
        accepted.append((path, deployment))
        data[path.name] = entries[name]
    return data, problems


class Catalog:
    """Keeps the ConfigMap's data equal to the valid deployments, and rolls the readers when it changes."""

    def __init__(self, api: KubeApi, namespace: str, name: str = CONFIGMAP, rollout: tuple[str, ...] = ROLLOUT) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.rollout = rollout
        self._configmaps = Resource("v1", "configmaps", namespace)
        self._workloads = Resource("apps/v1", "deployments", namespace)
        self._data: dict[str, str] | None = None  # what the ConfigMap holds: read once, then as written
        self._stamped: str | None = None  # the hash every rollout target carries, as far as this process knows
        self.left_out: dict[str, str] = {}
        """Deployments the last publish left out of the ConfigMap, with why."""
        self._lock = asyncio.Lock()

    async def entries(self) -> dict[str, str]:
        """What the ConfigMap holds now, by deployment name (read from the cluster the first time)."""
        async with self._lock:
            return {key.removesuffix(".yaml"): text for key, text in (await self._current()).items()}

    async def _current(self) -> dict[str, str]:
        if self._data is None:
            found = await self.api.get(self._configmaps, self.name)
            self._data = {k: v for k, v in ((found or {}).get("data") or {}).items() if k.endswith(".yaml")}
        return self._data

    async def publish(self, entries: dict[str, str]) -> None:
        """Make the ConfigMap hold `entries` (name -> YAML) and stamp its hash; no API call when nothing changed."""
        async with self._lock:
            data, left_out = admissible(entries)
            if left_out and left_out != self.left_out:
                log.warning("deployments_left_out", configmap=self.name, problems=left_out)
            self.left_out = left_out
            if data != await self._current():
                body = {"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": self.name, "namespace": self.namespace}, "data": data}  # fmt: skip
                await self.api.apply(body, self.namespace)
                self._data = data
                log.info("deployments_published", configmap=self.name, deployments=sorted(data))
            sha = digest(data)
            if sha == self._stamped:
                return
            for target in self.rollout:
                await self._stamp(target, sha)
            self._stamped = sha

    async def _stamp(self, target: str, sha: str) -> None:
        if await self.api.get(self._workloads, target) is None:
            log.warning("rollout_target_missing", deployment=target)  # not installed (yet): it will read the set
            return
        patch: dict[str, Any] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": target, "namespace": self.namespace},
            "spec": {"template": {"metadata": {"annotations": {ANNOTATION: sha}}}},
        }
        try:
            answer = await self.api.apply(patch, self.namespace, manager=ROLLOUT_MANAGER)
        except KubeApiError as exc:
            if exc.retryable:
                raise
            # Deleted between the read and the apply (an apply would try to create it, which the API refuses).
            log.warning("rollout_refused", deployment=target, error=str(exc))
            return
        log.info("rollout_stamped", deployment=target, sha256=sha[:12],
                 generation=answer.get("metadata", {}).get("generation"))  # fmt: skip
