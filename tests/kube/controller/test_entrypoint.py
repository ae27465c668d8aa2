"""`python -m tiffin.kube.controller` as a real process: KUBECONFIG at the API test double, REDIS_URL at Redis."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.kube.controller.conftest import LEASES, Cluster, eventually
from tests.kube.controller.test_lifecycle import SPEC, applied
from tests.procs import Proc
from tiffin.local.ports import free_port
from tiffin.local.redis_server import EmbeddedRedis


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


async def test_the_controller_process_reconciles_and_releases_its_lease_on_sigterm(
    cluster: Cluster, redis_server: EmbeddedRedis, tmp_path: Path, log_dir: Path
) -> None:
    port = free_port()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "double",
        "clusters": [{"name": "double", "cluster": {"server": cluster.url}}],
        "users": [{"name": "test", "user": {"token": "not-checked-by-the-double"}}],
        "contexts": [{"name": "double", "context": {"cluster": "double", "user": "test"}}],
    }))  # fmt: skip
    env = {
        "KUBECONFIG": str(kubeconfig),
        "REDIS_URL": redis_server.url,
        "TIFFIN_NAMESPACE": "tiffin",
        "POD_NAME": "controller-proc",
        "TIFFIN_LEASE_DURATION_S": "30",
        "TIFFIN_LEASE_RENEW_S": "1",
        "TIFFIN_CONTROLLER_PORT": str(port),
    }
    proc = Proc.module("controller", "tiffin.kube.controller", env, log_dir)
    try:
        await asyncio.to_thread(proc.wait_http, f"http://127.0.0.1:{port}/healthz")
        await cluster.create("smol", SPEC)
        await eventually(lambda: applied(cluster, "smol", 1), "the process applied the resource", deadline_s=60)
        lease = await cluster.api.get(LEASES, "tiffin-controller")
        assert lease is not None and lease["spec"]["holderIdentity"] == "controller-proc"
        health = await asyncio.to_thread(_get_json, f"http://127.0.0.1:{port}/healthz")
        assert health == {"status": "ok", "identity": "controller-proc", "leader": True}
    finally:
        code = await asyncio.to_thread(proc.stop)  # off the loop: the double must answer the lease release
    assert code == 0, proc.log()[-4000:]
    released: dict[str, Any] | None = await cluster.api.get(LEASES, "tiffin-controller")
    assert released is not None and not released["spec"].get("holderIdentity"), "the lease was handed over"
    assert '"event": "stopped"' in proc.log()
