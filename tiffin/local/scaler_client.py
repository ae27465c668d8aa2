"""A client of KEDA's external scaler protocol: what the local autoscaler uses to talk to `scaler/`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tiffin.contracts import keys
from tiffin.proto import externalscaler_pb2 as pb
from tiffin.proto import externalscaler_pb2_grpc as pb_grpc


class ScalerClient:
    """Calls one scaler over gRPC, for one ScaledObject per (deployment, component), as KEDA would."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = pb_grpc.ExternalScalerStub(self._channel)  # type: ignore[no-untyped-call]
        self._health: Any = health_pb2_grpc.HealthStub(self._channel)

    @staticmethod
    def ref(deployment: str, component: keys.Component) -> pb.ScaledObjectRef:
        return pb.ScaledObjectRef(
            name=f"{deployment}-{component}", scalerMetadata={"deployment": deployment, "component": component}
        )

    async def serving(self, timeout_s: float = 2.0) -> bool:
        """The scaler's gRPC health service says SERVING."""
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def is_active(self, deployment: str, component: keys.Component) -> bool:
        reply = await self._stub.IsActive(self.ref(deployment, component), timeout=5)
        return bool(reply.result)

    async def target(self, deployment: str, component: keys.Component) -> float:
        """The metric's target per replica (`targetSizeFloat`)."""
        reply = await self._stub.GetMetricSpec(self.ref(deployment, component), timeout=5)
        return float(reply.metricSpecs[0].targetSizeFloat)

    async def metric(self, deployment: str, component: keys.Component) -> float:
        ref = self.ref(deployment, component)
        name = f"{deployment}-{component}"
        reply = await self._stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref, metricName=name), timeout=5)
        return float(reply.metricValues[0].metricValueFloat)

    async def stream_active(self, deployment: str, component: keys.Component) -> AsyncIterator[bool]:
        """Each message of StreamIsActive, until the stream ends or fails (raises `grpc.aio.AioRpcError`)."""
        call = self._stub.StreamIsActive(self.ref(deployment, component))
        try:
            async for reply in call:
                yield bool(reply.result)
        finally:
            call.cancel()

    async def close(self) -> None:
        await self._channel.close()
