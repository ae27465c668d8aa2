"""The platform manifests start the real components: the interceptor and the scaler, run as real processes with
exactly the environment, mounted files and probes of the dev overlay (Secrets and the pod's own fields filled
in, ports moved to free ones), become ready, pass their probes, and stop cleanly on SIGTERM. Their deployments
folder is empty, as on a cluster without TiffinDeployments (the controller fills the ConfigMap)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.deploy.manifests import deploy_tree, kustomize, pod_specs
from tests.procs import Proc
from tiffin.local.ports import free_port
from tiffin.local.redis_server import EmbeddedRedis

TOKEN = "admin-token-for-the-manifest-test"
DEADLINE_S = 60.0


class Pod:
    """One container of a rendered Deployment, turned into a process's environment on this machine."""

    def __init__(self, objs: list[dict[str, Any]], name: str, redis_url: str, root: Path) -> None:
        (obj,) = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == name]
        (self.spec,) = pod_specs(obj)
        (self.container,) = self.spec["containers"]
        self.ports = {p["containerPort"]: free_port() for p in self.container.get("ports", [])}
        self.named = {p["name"]: self.ports[p["containerPort"]] for p in self.container.get("ports", [])}
        self.mounts: dict[str, Path] = {}
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        configmaps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
        for mount in self.container.get("volumeMounts", []):
            folder = root / name / mount["name"]
            folder.mkdir(parents=True)
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                # As the platform is first applied: the deployments ConfigMap has no keys until the controller writes.
                for key, text in (configmaps[volume["configMap"]["name"]].get("data") or {}).items():
                    (folder / key).write_text(text)
            elif "secret" in volume:
                assert volume["secret"]["secretName"] == "tiffin-admin", "a Secret this test does not know"
                (folder / "token").write_text(TOKEN)
            self.mounts[mount["mountPath"]] = folder
        secrets = {("tiffin-redis", "url"): redis_url}
        fields = {"metadata.name": f"{name}-test-pod", "metadata.namespace": "tiffin"}
        self.env: dict[str, str] = {}
        for item in self.container.get("env", []):
            if "value" in item:
                value = item["value"]
            elif "secretKeyRef" in item["valueFrom"]:
                ref = item["valueFrom"]["secretKeyRef"]
                value = secrets[(ref["name"], ref["key"])]
            else:
                value = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
            for path, folder in sorted(self.mounts.items(), key=lambda m: -len(m[0])):
                if value == path or value.startswith(path + "/"):
                    value = str(folder) + value[len(path) :]
                    break
            if value.isdigit() and int(value) in self.ports:
                value = str(self.ports[int(value)])
            self.env[item["name"]] = value

    @property
    def module(self) -> str:
        command = self.container["command"]
        assert command[:2] == ["python", "-m"]
        return str(command[2])

    def port(self, probe: dict[str, Any]) -> int:
        (handler,) = [probe[k] for k in ("httpGet", "grpc", "tcpSocket") if k in probe]
        port = handler["port"]
        return self.named[port] if isinstance(port, str) else self.ports[port]


def passes(pod: Pod, probe: dict[str, Any]) -> bool:
    """One probe as the kubelet runs it (httpGet, grpc or tcpSocket), against this machine's ports."""
    port = pod.port(probe)
    try:
        if "httpGet" in probe:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe['httpGet']['path']}", timeout=2) as resp:
                return 200 <= resp.status < 400
        if "grpc" in probe:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except (OSError, urllib.error.URLError, grpc.RpcError):
        return False


def wait_ready(proc: Proc, pod: Pod) -> None:
    deadline = time.monotonic() + DEADLINE_S
    probe = pod.container["readinessProbe"]
    while time.monotonic() < deadline:
        assert proc.alive(), f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()[-4000:]}"
        if passes(pod, probe):
            return
        time.sleep(0.2)  # a process gives no readiness event but its probe
    raise AssertionError(f"{proc.name} never passed {probe}:\n{proc.log()[-4000:]}")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return kustomize(deploy_tree(tmp_path_factory.mktemp("deploy")) / "overlays" / "dev")


@pytest.mark.parametrize("name", ["tiffin-interceptor", "tiffin-scaler"])
def test_the_manifest_starts_the_component_and_its_probes_pass(
    rendered: list[dict[str, Any]], name: str, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    pod = Pod(rendered, name, redis_server.url, tmp_path)
    proc = Proc.module(name, pod.module, pod.env, tmp_path)
    try:
        wait_ready(proc, pod)
        for kind in ("startupProbe", "livenessProbe"):
            if kind in pod.container:
                assert passes(pod, pod.container[kind]), f"{name}: {kind} fails"
        if name == "tiffin-interceptor":
            check_interceptor(pod)
    finally:
        code = proc.stop(timeout_s=float(pod.spec["terminationGracePeriodSeconds"]))
    assert code == 0, f"{name} did not stop cleanly on SIGTERM ({code}):\n{proc.log()[-4000:]}"


def check_interceptor(pod: Pod) -> None:
    """Plain HTTP on the public port (TLS ends at the Ingress); the admin token from the mounted Secret."""
    admin, public = pod.named["admin"], pod.named["http"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5)
    refused.value.close()
    assert refused.value.code == 401
    request = urllib.request.Request(f"http://127.0.0.1:{admin}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert b"tiffin_requests_total" in resp.read()
    # An empty cluster (no TiffinDeployment yet): any model is the OpenAI-shaped 404, over plain HTTP.
    request = urllib.request.Request(f"http://127.0.0.1:{public}/v1/chat/completions", method="POST",
                                     data=b'{"model": "smollm2", "messages": []}',
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as unknown:
        urllib.request.urlopen(request, timeout=5)
    with unknown.value as answer:
        assert answer.code == 404
        assert b'"model_not_found"' in answer.read()
