"""GetMetricSpec and GetMetrics against the real scaler process, the queue and load reports in real Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from redis.asyncio import Redis

from tests.scaler.conftest import SERVICE, Keda, Scaler, enqueue, health_status
from tiffin.contracts.load import LoadReport, RunnerLoad
from tiffin.contracts.queue import DeploymentQueue


async def metric(stub: Any, keda: Keda, deployment: str, component: str) -> tuple[str, float, int]:
    request = keda.pb.GetMetricsRequest(scaledObjectRef=keda.ref(deployment, component),
                                        metricName=f"{deployment}-{component}")  # fmt: skip
    [value] = (await stub.GetMetrics(request)).metricValues
    return value.metricName, value.metricValueFloat, value.metricValue


@pytest.mark.parametrize(
    ("deployment", "component", "target", "size"),
    [("alpha", "api", 4.0, 4), ("alpha", "runner", 2.5, 3), ("beta", "api", 6.0, 6), ("beta", "runner", 4.0, 4)],
)
async def test_metric_spec_comes_from_the_deployment_file(
    stub: Any, keda: Keda, deployment: str, component: str, target: float, size: int
) -> None:
    [spec] = (await stub.GetMetricSpec(keda.ref(deployment, component))).metricSpecs

    assert spec.metricName == f"{deployment}-{component}"
    assert spec.targetSizeFloat == target
    assert spec.targetSize == size  # the deprecated int field: rounded up, never 0 for a fractional target


async def test_stream_metric_spec_sends_the_spec_at_once_and_stays_open(stub: Any, keda: Keda) -> None:
    call = stub.StreamMetricSpec(keda.ref("alpha", "runner"))

    first = await call.read()

    assert first == await stub.GetMetricSpec(keda.ref("alpha", "runner"))
    assert not call.done()
    call.cancel()


async def test_api_metric_counts_waiting_and_in_flight_requests(redis: Redis, stub: Any, keda: Keda) -> None:
    assert await metric(stub, keda, "alpha", "api") == ("alpha-api", 0.0, 0)
    queue = DeploymentQueue(redis, "alpha")
    await queue.ensure_group()
    await enqueue(redis, "alpha", 5)
    assert await metric(stub, keda, "alpha", "api") == ("alpha-api", 5.0, 5)

    taken = await queue.read("c1", count=2, block_ms=100)
    assert len(taken) == 2
    assert await queue.depth() == (3, 2)
    assert await metric(stub, keda, "alpha", "api") == ("alpha-api", 5.0, 5)  # in flight still needs API servers

    await queue.finish(taken[0].entry_id)
    assert await metric(stub, keda, "alpha", "api") == ("alpha-api", 4.0, 4)
    assert (await metric(stub, keda, "beta", "api"))[1] == 0.0  # other deployments are untouched


async def test_api_metric_counts_entries_held_by_a_consumer_that_died(redis: Redis, stub: Any, keda: Keda) -> None:
    queue = DeploymentQueue(redis, "alpha")
    await queue.ensure_group()
    await enqueue(redis, "alpha", 3)
    # A proxy reads two entries and is never heard from again: they stay pending and will be redelivered.
    assert len(await queue.read("dead-proxy", count=2, block_ms=100)) == 2
    assert len(await queue.read("live-proxy", count=1, block_ms=100)) == 1

    assert await queue.depth() == (0, 3)
    assert await metric(stub, keda, "alpha", "api") == ("alpha-api", 3.0, 3)


async def test_runner_metric_is_the_sum_of_live_load_reports(redis: Redis, stub: Any, keda: Keda) -> None:
    await enqueue(redis, "alpha", 2)  # queued requests are the api metric's, not the runner's
    assert await metric(stub, keda, "alpha", "runner") == ("alpha-runner", 0.0, 0)
    await RunnerLoad(redis, "alpha", ttl_s=120).report("api-1", LoadReport(waiting=1, runners={"r1": 2, "r2": 1}))
    await RunnerLoad(redis, "alpha", ttl_s=1).report("api-2", LoadReport(runners={"r1": 3}))

    assert await metric(stub, keda, "alpha", "runner") == ("alpha-runner", 7.0, 7)

    # api-2 stops reporting (it died): its load lapses with its report.
    deadline = time.monotonic() + 10
    while (value := await metric(stub, keda, "alpha", "runner")) != ("alpha-runner", 4.0, 4):
        assert time.monotonic() < deadline, value
        await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    ("meta", "code", "words"),
    [
        ({"deployment": "nope", "component": "api"}, grpc.StatusCode.NOT_FOUND, ["'nope'", "alpha, beta, gamma"]),
        ({"component": "api"}, grpc.StatusCode.INVALID_ARGUMENT, ["deployment is missing", "alpha, beta, gamma"]),
        ({"deployment": "alpha"}, grpc.StatusCode.INVALID_ARGUMENT, ["component is missing", "'api' or 'runner'"]),
        ({"deployment": "alpha", "component": "gpu"}, grpc.StatusCode.INVALID_ARGUMENT, ["'gpu'", "'api' or 'runner'"]),
    ],
)
async def test_bad_scaler_metadata_is_refused_with_a_message(
    stub: Any, keda: Keda, meta: dict[str, str], code: grpc.StatusCode, words: list[str]
) -> None:
    ref = keda.pb.ScaledObjectRef(name="so", namespace="default", scalerMetadata=meta)
    calls = [stub.IsActive(ref), stub.GetMetricSpec(ref),
             stub.GetMetrics(keda.pb.GetMetricsRequest(scaledObjectRef=ref, metricName="x"))]  # fmt: skip
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == code
        for word in words:
            assert word in (caught.value.details() or "")

    stream = stub.StreamIsActive(ref)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert caught.value.code() == code


def test_health_service_answers_serving_for_the_server_and_the_scaler_service(scaler: Scaler) -> None:
    assert health_status(scaler.address) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(scaler.address, SERVICE) == health_pb2.HealthCheckResponse.SERVING
