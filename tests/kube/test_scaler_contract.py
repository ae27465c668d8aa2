"""A rendered ScaledObject's trigger, sent as KEDA sends it, is understood by the real scaler reading the rendered
ConfigMap: the metadata keys, the deployment name and component, and the model folder it need not see."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.kube.test_render import EXAMPLES, by_kind, load, rendered
from tests.procs import Proc
from tests.scaler.conftest import Keda, Scaler
from tiffin.local.ports import free_port
from tiffin.local.redis_server import EmbeddedRedis


@pytest.fixture
def cluster_scaler(tmp_path: Path, redis_server: EmbeddedRedis) -> Any:
    """The scaler process as the platform would run it in the cluster: the rendered YAML mounted as its config,
    the model folder (/models/...) absent, as it is everywhere but on the runner's volume."""
    config = tmp_path / "deployment.yaml"
    config.write_text(by_kind(rendered(EXAMPLES[1]), "ConfigMap", "qwen-config")["data"]["deployment.yaml"])
    port = free_port()
    env = {"REDIS_URL": redis_server.url, "TIFFIN_CONFIG": str(config), "TIFFIN_SCALER_PORT": str(port),
           "TIFFIN_SCALER_POLL_S": "30", "TIFFIN_CHECK_MODEL_FOLDERS": "0"}  # fmt: skip
    scaler = Scaler(Proc.module("scaler", "scaler", env, tmp_path), f"127.0.0.1:{port}")
    scaler.wait_health()
    yield scaler
    assert scaler.proc.stop() == 0, scaler.proc.log()[-4000:]


async def test_scaler_answers_the_rendered_triggers(cluster_scaler: Scaler, keda: Keda) -> None:
    dep = load(EXAMPLES[1])
    objects = rendered(EXAMPLES[1])
    async with grpc.aio.insecure_channel(cluster_scaler.address) as channel:
        stub: Any = keda.grpc.ExternalScalerStub(channel)
        for component in ("api", "runner"):
            scaled = by_kind(objects, "ScaledObject", f"qwen-{component}")
            [trigger] = scaled["spec"]["triggers"]
            ref = keda.pb.ScaledObjectRef(
                name=scaled["metadata"]["name"], namespace=scaled["metadata"]["namespace"],
                scalerMetadata=trigger["metadata"],
            )  # fmt: skip

            [spec] = (await stub.GetMetricSpec(ref)).metricSpecs
            active = await stub.IsActive(ref)

            assert spec.metricName == f"qwen-{component}"
            assert spec.targetSizeFloat == dep.component(component).scale_target
            assert active.result is False  # nothing queued: the deployment rests at zero
