"""The controller against a real Kubernetes API, when KUBECONFIG names a reachable one (skipped otherwise).

Needs the TiffinDeployment CRD (applied from deploy/base/crds/ when absent and the file exists) and KEDA's
ScaledObject CRD. Works in a fresh namespace, deleted afterwards. Create, update with pruning, delete (the
deployments ConfigMap follows; the model cache stays).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import Configuration
from redis.asyncio import Redis

from tests.kube.controller.conftest import eventually
from tiffin.kube.controller.kubeapi import KubeApi, KubeApiError, Resource
from tiffin.kube.controller.leader import LeaderElector
from tiffin.kube.controller.reconcile import GROUP_VERSION
from tiffin.kube.controller.run import Controller
from tiffin.kube.render import Platform

CRD_FILE = Path(__file__).parents[3] / "deploy" / "base" / "crds" / "tiffindeployments.tiffin.io.yaml"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


@pytest.fixture
async def real_api() -> AsyncIterator[tuple[KubeApi, str]]:
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("KUBECONFIG names no cluster")
    configuration = Configuration()
    try:
        await kube_config.load_kube_config(client_configuration=configuration)
    except (kube_config.ConfigException, OSError) as exc:
        pytest.skip(f"KUBECONFIG unusable: {exc}")
    api = KubeApi(configuration, request_timeout_s=10)
    namespace = f"tiffin-test-{secrets.token_hex(3)}"
    try:
        try:
            await api.request("GET", "/version")
        except KubeApiError as exc:
            pytest.skip(f"no Kubernetes API reachable: {exc}")
        await _ensure_crds(api)
        await api.request("POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace",
                                                               "metadata": {"name": namespace}})  # fmt: skip
        yield api, namespace
        await api.request("DELETE", f"/api/v1/namespaces/{namespace}")
    finally:
        await api.close()


async def _ensure_crds(api: KubeApi) -> None:
    try:
        await api.request("GET", f"{CRDS}/scaledobjects.keda.sh")
    except KubeApiError:
        pytest.skip("KEDA's ScaledObject CRD is not installed")
    try:
        await api.request("GET", f"{CRDS}/tiffindeployments.tiffin.io")
    except KubeApiError:
        if not CRD_FILE.exists():
            pytest.skip("the TiffinDeployment CRD is neither installed nor in deploy/base/crds/")
        crd = yaml.safe_load(CRD_FILE.read_text())
        query = {"fieldManager": "tiffin-tests", "force": "true"}
        await api.request("PATCH", f"{CRDS}/{crd['metadata']['name']}", query, crd, "application/apply-patch+yaml")
        await asyncio.sleep(2)  # establishing a CRD has no event to await from here; a test setup step only


async def test_create_update_delete_on_a_real_cluster(real_api: tuple[KubeApi, str], redis: Redis) -> None:
    api, namespace = real_api
    resources = Resource(GROUP_VERSION, "tiffindeployments", namespace)
    configmaps = Resource("v1", "configmaps", namespace)
    elector = LeaderElector(api, namespace, "tiffin-controller", "test-controller", 10, 2)
    stop = asyncio.Event()
    task = asyncio.create_task(Controller(api, redis, Platform(namespace=namespace), elector, 30).run(stop))
    selector = "app.kubernetes.io/managed-by=tiffin,tiffin.io/deployment=smol"

    async def applied(generation: int) -> dict[str, Any] | None:
        resource = await api.get(resources, "smol")
        conditions = ((resource or {}).get("status") or {}).get("conditions") or []
        cond = next((c for c in conditions if c["type"] == "Applied"), None)
        ok = cond and cond["status"] == "True" and cond["observedGeneration"] == generation
        return cond if ok else None

    try:
        body = {"apiVersion": GROUP_VERSION, "kind": "TiffinDeployment", "metadata": {"name": "smol"},
                "spec": {"model": "smollm2"}}  # fmt: skip
        await api.request("POST", resources.path(), body=body)
        await eventually(lambda: applied(1), "applied", deadline_s=120)
        catalog = await api.get(configmaps, "tiffin-deployments")
        assert catalog is not None and list(catalog["data"]) == ["smol.yaml"]
        stale = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "smol-stale", "labels": {
            "app.kubernetes.io/managed-by": "tiffin", "tiffin.io/deployment": "smol"}}}  # fmt: skip
        await api.request("POST", configmaps.path(), body=stale)
        await api.merge_patch(resources, "smol", {"spec": {"runner": {"max_replicas": 2}}})
        await eventually(lambda: applied(2), "the update applied", deadline_s=120)
        assert await api.get(configmaps, "smol-stale") is None

        await api.delete(resources, "smol")

        async def gone() -> bool:
            return await api.get(resources, "smol") is None

        await eventually(gone, "deleted", deadline_s=120)
        assert (await api.list(configmaps, selector))["items"] == []
        catalog = await api.get(configmaps, "tiffin-deployments")
        assert catalog is not None and not catalog.get("data")
        assert await api.get(Resource("v1", "persistentvolumeclaims", namespace), "smol-models") is not None
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
