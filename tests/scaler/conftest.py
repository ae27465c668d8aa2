"""Scaler fixtures: a gRPC client generated from KEDA's own proto, and the real scaler as a process.

The client never imports `tiffin.proto`: it is what KEDA would be, built from KEDA's file, so a scaler that
drifted from KEDA's wire format fails here.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis

from tests.e2e.conftest import write_deployment
from tests.procs import ROOT, Proc
from tiffin.contracts import keys
from tiffin.contracts.frames import Envelope
from tiffin.contracts.queue import Admission, DeploymentQueue
from tiffin.local.ports import free_port
from tiffin.local.redis_server import EmbeddedRedis

_KEDA_RELATIVE = Path("shared", "reference", "keda", "externalscaler.proto")
# KEDA's file from the team's shared folder: named by KEDA_PROTO, or beside this checkout or a folder above it.
KEDA_PROTO = next(
    (p for p in [Path(os.environ.get("KEDA_PROTO", "/nonexistent")), *(a / _KEDA_RELATIVE for a in ROOT.parents)]
     if p.is_file()),
    ROOT.parent / _KEDA_RELATIVE,
)  # fmt: skip
VENDORED_PROTO = ROOT / "tiffin" / "proto" / "externalscaler.proto"
SERVICE = "externalscaler.ExternalScaler"


def keda_proto() -> Path:
    """KEDA's own file when it can be found, else the vendored copy."""
    return KEDA_PROTO if KEDA_PROTO.is_file() else VENDORED_PROTO


@dataclass(frozen=True)
class Keda:
    """The client modules protoc generated from KEDA's proto."""

    pb: ModuleType
    grpc: ModuleType

    def ref(self, deployment: str | None, component: str | None = None) -> Any:
        meta = {k: v for k, v in (("deployment", deployment), ("component", component)) if v is not None}
        return self.pb.ScaledObjectRef(name=f"{deployment}-so", namespace="default", scalerMetadata=meta)


@pytest.fixture(scope="session")
def keda(tmp_path_factory: pytest.TempPathFactory) -> Keda:
    out = tmp_path_factory.mktemp("keda-client")
    proto = keda_proto()
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto.parent}", f"--python_out={out}",
         f"--grpc_python_out={out}", str(proto)],
        check=True, capture_output=True,
    )  # fmt: skip
    sys.path.insert(0, str(out))
    try:
        return Keda(importlib.import_module("externalscaler_pb2"), importlib.import_module("externalscaler_pb2_grpc"))
    finally:
        sys.path.remove(str(out))


def health_status(address: str, service: str = "") -> int | None:
    """The gRPC health status of `service`, or None if the server does not answer."""
    with grpc.insecure_channel(address) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # (types-grpcio-health-checking lists no methods)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        except grpc.RpcError:
            return None
        return int(reply.status)


@dataclass
class Scaler:
    proc: Proc
    address: str

    def wait_health(self, status: int = health_pb2.HealthCheckResponse.SERVING, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise AssertionError(f"scaler exited with {self.proc.popen.returncode}:\n{self.proc.log()[-4000:]}")
            if health_status(self.address) == status:
                return
            time.sleep(0.05)  # a child process gives no readiness event but its health service
        raise AssertionError(f"scaler not in health state {status} after {timeout_s}s:\n{self.proc.log()[-4000:]}")


def start_scaler(folder: Path, redis_url: str, config: list[Path], poll_s: float, name: str = "scaler") -> Scaler:
    log_dir = folder / "logs"
    log_dir.mkdir(exist_ok=True)
    port = free_port()
    env = {"REDIS_URL": redis_url, "TIFFIN_CONFIG": ":".join(map(str, config)), "TIFFIN_SCALER_PORT": str(port),
           "TIFFIN_SCALER_POLL_S": str(poll_s)}  # fmt: skip
    return Scaler(Proc.module(name, "scaler", env, log_dir), f"127.0.0.1:{port}")


def write_deployments(folder: Path) -> list[Path]:
    """alpha and beta scale to zero the moment they are idle; gamma stays up for an hour after its last request."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_deployment(folder, "alpha", runner={"concurrency": 4, "target": 2.5}, scaling={"idle_period_s": 0}),
        write_deployment(folder, "beta", api={"concurrency": 6}, scaling={"idle_period_s": 0}),
        write_deployment(folder, "gamma", scaling={"idle_period_s": 3600}),
    ]


@pytest.fixture(scope="session")
def scaler(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[Scaler]:
    """The scaler on the session Redis; its poll interval (30 s) is far above any push latency we accept."""
    folder = tmp_path_factory.mktemp("scaler")
    proc = start_scaler(folder, redis_server.url, write_deployments(folder / "deployments"), poll_s=30)
    proc.wait_health()
    yield proc
    assert proc.proc.stop() == 0, proc.proc.log()[-4000:]


@pytest.fixture
async def stub(scaler: Scaler, keda: Keda) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(scaler.address) as channel:
        yield keda.grpc.ExternalScalerStub(channel)


def envelope(request_id: str | None = None) -> Envelope:
    return Envelope(request_id=request_id or uuid.uuid4().hex, reply_to=keys.reply("interceptor-test"),
                    path="/v1/chat/completions", body=b'{"model": "m"}', enqueued_ms=1, wait_deadline_ms=2)  # fmt: skip


async def enqueue(redis: Redis, deployment: str, count: int = 1) -> list[Admission]:
    """Enqueue as the interceptor does (the same script publishes the wake)."""
    queue = DeploymentQueue(redis, deployment)
    return [await queue.admit(envelope(), max_waiting=100, ttl_s=120) for _ in range(count)]
