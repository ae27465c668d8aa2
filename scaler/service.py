"""The `externalscaler.ExternalScaler` service: KEDA asks per deployment and component, Redis answers.

`scalerMetadata` of a ScaledObject's trigger is `{deployment: NAME, component: api|runner}`; the metric is
named `{deployment}-{component}` and its target is the component's `scale_target`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from scaler.wake import WakeHub
from tiffin.contracts import coldstart, keys
from tiffin.contracts.config import Deployment
from tiffin.contracts.demand import Demand, read_demand
from tiffin.proto import externalscaler_pb2 as pb
from tiffin.proto import externalscaler_pb2_grpc as pb_grpc

log = structlog.get_logger("scaler.service")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["ExternalScaler"].full_name
REDIS_TIMEOUT_S = 5.0
"""A Redis that hangs answers UNAVAILABLE after this long instead of holding KEDA's call."""

Context = grpc.aio.ServicerContext[Any, Any]
_T = TypeVar("_T")

# The generated registration function is untyped (no stub generator for grpc modules is installed).
_add_servicer: Callable[[object, grpc.aio.Server], None] = pb_grpc.add_ExternalScalerServicer_to_server


def metric_name(deployment: str, component: keys.Component) -> str:
    return f"{deployment}-{component}"


def metric_spec(deployment: Deployment, component: keys.Component) -> pb.GetMetricSpecResponse:
    """One MetricSpec: the load one replica of `component` should carry."""
    target = deployment.component(component).scale_target
    spec = pb.MetricSpec(
        metricName=metric_name(deployment.name, component), targetSize=math.ceil(target), targetSizeFloat=target
    )
    return pb.GetMetricSpecResponse(metricSpecs=[spec])


class ExternalScaler(pb_grpc.ExternalScalerServicer):
    """KEDA's external (push) scaler over the deployments of the loaded YAML files."""

    def __init__(self, redis: Redis, deployments: list[Deployment], wakes: WakeHub, poll_s: float) -> None:
        self._redis = redis
        self._deployments = {d.name: d for d in deployments}
        self._wakes = wakes
        self._poll_s = poll_s
        self.stopping = asyncio.Event()

    def stop(self) -> None:
        """End open streams cleanly, so they do not hold the server's grace period on shutdown."""
        self.stopping.set()
        self._wakes.nudge_all()

    def add_to(self, server: grpc.aio.Server) -> None:
        _add_servicer(self, server)

    # --- request parsing and Redis access -----------------------------------------------------------------

    async def _target(self, ref: pb.ScaledObjectRef, context: Context) -> tuple[Deployment, keys.Component]:
        meta = dict(ref.scalerMetadata)
        known = ", ".join(sorted(self._deployments)) or "(none)"
        name = meta.get("deployment", "").strip()
        if not name:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"scalerMetadata.deployment is missing (ScaledObject {ref.namespace}/{ref.name}); "
                f"known deployments: {known}",
            )
        deployment = self._deployments.get(name)
        if deployment is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"unknown deployment '{name}' in scalerMetadata; known deployments: {known}"
            )
        component = meta.get("component", "").strip()
        if component not in keys.COMPONENTS:
            problem = "is missing" if not component else f"'{component}' is not valid"
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"scalerMetadata.component {problem} for deployment '{name}': expected 'api' or 'runner'",
            )
        return deployment, "api" if component == "api" else "runner"

    async def _redis_call(self, what: str, call: Callable[[], Awaitable[_T]], context: Context) -> _T:
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                return await call()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis_unavailable", reading=what, error=repr(exc))
            # The detail (addresses, the driver's text) stays in this log: the message travels to KEDA's events.
            reason = type(exc).__name__
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"cannot read {what} from Redis ({reason}); see the scaler's log"
            )

    async def _demand(self, deployment: Deployment, context: Context) -> Demand:
        return await self._redis_call(
            f"the demand of deployment '{deployment.name}'", lambda: read_demand(self._redis, deployment), context
        )

    async def _active(self, deployment: Deployment, context: Context) -> bool:
        demand = await self._demand(deployment, context)
        return demand.active(deployment.scaling.idle_period_s)

    # --- the RPCs -----------------------------------------------------------------------------------------

    async def IsActive(self, request: pb.ScaledObjectRef, context: Context) -> pb.IsActiveResponse:
        deployment, _ = await self._target(request, context)
        return pb.IsActiveResponse(result=await self._active(deployment, context))

    async def StreamIsActive(self, request: pb.ScaledObjectRef, context: Context) -> None:
        """The current value at once; then on every wake (pushed) or poll, whenever it changes.

        A wake always sends `true` while the deployment is active, even if unchanged: KEDA treats each message
        as a nudge to scale from zero now.
        """
        deployment, component = await self._target(request, context)
        log.info("stream_opened", deployment=deployment.name, component=component, peer=context.peer())
        try:
            # Registered before the first read, so a wake published from here on is never missed.
            with self._wakes.waiter(deployment.name) as waiter:
                # A cancellation swallowed inside a Redis call (asyncio.wait_for on 3.11) must still end the loop.
                # (types-grpcio declares the callback as a class, so no plain callable matches it.)
                context.add_done_callback(lambda _: waiter.notify(wake=False))  # type: ignore[arg-type]
                last = await self._active(deployment, context)
                await self._push(deployment, last, context)
                while True:
                    await waiter.wait(self._poll_s)
                    if self.stopping.is_set() or context.done():
                        break
                    woken = waiter.take() > 0
                    active = await self._active(deployment, context)
                    if active != last or (woken and active):
                        await self._push(deployment, active, context)
                        log.debug("stream_sent", deployment=deployment.name, component=component, active=active)
                    last = active
        finally:
            log.info("stream_closed", deployment=deployment.name, component=component)

    async def _push(self, deployment: Deployment, active: bool, context: Context) -> None:
        """Send one StreamIsActive message; a `true` marks the `activated` phase of a cold start under way."""
        if active:
            # Marked just before the push, so it is never later than what the scaling writer does on hearing it.
            await coldstart.note(self._redis, deployment.name, "activated", timeout_s=1.0)
        await context.write(pb.IsActiveResponse(result=active))

    async def GetMetricSpec(self, request: pb.ScaledObjectRef, context: Context) -> pb.GetMetricSpecResponse:
        deployment, component = await self._target(request, context)
        return metric_spec(deployment, component)

    async def StreamMetricSpec(self, request: pb.ScaledObjectRef, context: Context) -> None:
        """The spec at once; specs come from the YAML files and do not change while running."""
        deployment, component = await self._target(request, context)
        await context.write(metric_spec(deployment, component))
        await self.stopping.wait()

    async def GetMetrics(self, request: pb.GetMetricsRequest, context: Context) -> pb.GetMetricsResponse:
        deployment, component = await self._target(request.scaledObjectRef, context)
        value = (await self._demand(deployment, context)).metric(component)
        metric = pb.MetricValue(
            metricName=metric_name(deployment.name, component), metricValue=value, metricValueFloat=float(value)
        )
        return pb.GetMetricsResponse(metricValues=[metric])
