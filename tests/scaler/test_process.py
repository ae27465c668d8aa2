"""The scaler as a process: settings, shutdown, polling for time passing, and Redis going away and back."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from redis.asyncio import Redis

from tests.e2e.conftest import write_deployment
from tests.procs import ROOT
from tests.scaler.conftest import Keda, enqueue, start_scaler, write_deployments
from tiffin.common.redis_conn import connect
from tiffin.contracts.queue import DeploymentQueue
from tiffin.local.ports import free_port
from tiffin.local.redis_server import EmbeddedRedis

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def run_scaler(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": "redis://127.0.0.1:1/0", **env}
    return subprocess.run([sys.executable, "-m", "scaler"], env=full, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TIFFIN_CONFIG": ""}, "TIFFIN_CONFIG"),
        ({"TIFFIN_SCALER_POLL_S": "soon"}, "TIFFIN_SCALER_POLL_S"),
        ({"TIFFIN_SCALER_POLL_S": "0"}, "TIFFIN_SCALER_POLL_S"),
        ({"TIFFIN_SCALER_PORT": "99999"}, "TIFFIN_SCALER_PORT"),
        ({"TIFFIN_SCALER_PORT": "ninety"}, "TIFFIN_SCALER_PORT"),
        ({"TIFFIN_SCALER_HOST": " "}, "TIFFIN_SCALER_HOST"),
    ],
)
def test_bad_settings_exit_naming_the_variable(tmp_path: Path, env: dict[str, str], named: str) -> None:
    config = ":".join(map(str, write_deployments(tmp_path)))
    done = run_scaler({"TIFFIN_CONFIG": config, **env})
    assert done.returncode != 0
    assert named in done.stderr


def test_a_port_in_use_exits_naming_the_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = ":".join(map(str, write_deployments(tmp_path)))
        done = run_scaler({"TIFFIN_CONFIG": config, "TIFFIN_SCALER_PORT": str(port)})
    assert done.returncode != 0
    assert "TIFFIN_SCALER_PORT" in done.stderr


def test_a_bad_deployment_file_exits_with_its_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Not_A_Name\nmodel: smollm2\n")
    done = run_scaler({"TIFFIN_CONFIG": str(bad)})
    assert done.returncode != 0
    assert f"{bad}: name:" in done.stderr


async def test_an_empty_folder_serves_and_answers_not_found_for_every_deployment(
    tmp_path: Path, redis_server: EmbeddedRedis, keda: Keda
) -> None:
    # An empty cluster: the controller's ConfigMap has no keys yet, so the mounted folder holds no file.
    folder = tmp_path / "deployments"
    folder.mkdir()
    scaler = start_scaler(tmp_path, redis_server.url, [folder], poll_s=30)
    try:
        await asyncio.to_thread(scaler.wait_health)
        async with grpc.aio.insecure_channel(scaler.address) as channel:
            stub: Any = keda.grpc.ExternalScalerStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.IsActive(keda.ref("smollm2", "api"))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert "'smollm2'" in (caught.value.details() or "")
            assert "(none)" in (caught.value.details() or "")
    finally:
        code = scaler.proc.stop()
    assert code == 0, scaler.proc.log()[-4000:]
    assert '"event": "no_deployments"' in scaler.proc.log()


async def test_sigterm_ends_open_streams_and_exits_zero(
    tmp_path: Path, redis_server: EmbeddedRedis, keda: Keda
) -> None:
    scaler = start_scaler(tmp_path, redis_server.url, write_deployments(tmp_path / "d"), poll_s=30)
    scaler.wait_health()
    async with grpc.aio.insecure_channel(scaler.address) as channel:
        stub = keda.grpc.ExternalScalerStub(channel)
        stream = stub.StreamIsActive(keda.ref("gamma", "api"))
        specs = stub.StreamMetricSpec(keda.ref("gamma", "api"))
        await stream.read()
        await specs.read()

        code = await asyncio.to_thread(scaler.proc.stop)

        assert code == 0, scaler.proc.log()[-4000:]
        assert await stream.read() is grpc.aio.EOF  # ended by the server, not left to time out
        assert await specs.read() is grpc.aio.EOF
    log = scaler.proc.log()
    assert '"event": "serving"' in log
    assert scaler.address in log
    assert '"event": "stopped"' in log


async def test_streams_notice_an_idle_period_ending_by_polling(
    tmp_path: Path, redis_server: EmbeddedRedis, redis: Redis, keda: Keda
) -> None:
    config = write_deployment(tmp_path, "delta", scaling={"idle_period_s": 1})
    scaler = start_scaler(tmp_path, redis_server.url, [config], poll_s=0.2)
    try:
        await asyncio.to_thread(scaler.wait_health)
        async with grpc.aio.insecure_channel(scaler.address) as channel:
            stream = keda.grpc.ExternalScalerStub(channel).StreamIsActive(keda.ref("delta", "api"))
            assert (await stream.read()).result is False
            queue = DeploymentQueue(redis, "delta")
            await queue.ensure_group()
            await enqueue(redis, "delta")
            assert (await asyncio.wait_for(stream.read(), 10)).result is True
            [delivery] = await queue.read("c1", count=1, block_ms=1000)
            await queue.finish(delivery.entry_id)

            # Nothing is published when a deployment goes idle: only the poll can see the idle period pass.
            assert (await asyncio.wait_for(stream.read(), 20)).result is False
            stream.cancel()
    finally:
        scaler.proc.stop()


async def test_redis_outage_answers_unavailable_and_wakes_resume_after_it(tmp_path: Path, keda: Keda) -> None:
    port = free_port()
    server = EmbeddedRedis(tmp_path / "redis", port=port)
    server.start()
    scaler = start_scaler(tmp_path, server.url, write_deployments(tmp_path / "d"), poll_s=30)
    try:
        await asyncio.to_thread(scaler.wait_health)
        async with grpc.aio.insecure_channel(scaler.address) as channel:
            stub: Any = keda.grpc.ExternalScalerStub(channel)
            stream = stub.StreamIsActive(keda.ref("alpha", "api"))
            assert (await stream.read()).result is False

            server.stop()
            await asyncio.to_thread(scaler.wait_health, NOT_SERVING)
            request = keda.pb.GetMetricsRequest(scaledObjectRef=keda.ref("alpha", "api"), metricName="alpha-api")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetMetrics(request)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            details = caught.value.details() or ""
            assert "Redis" in details
            assert "see the scaler's log" in details  # where to read the detail ...
            assert str(port) not in details  # ... which stays there: where Redis lives is not for KEDA's events
            assert scaler.proc.alive()

            server = EmbeddedRedis(tmp_path / "redis", port=port)
            server.start()
            redis = connect(server.url)
            try:
                # Possibly published before the scaler resubscribed: then its resubscription makes streams re-read.
                started = time.monotonic()
                await enqueue(redis, "alpha")
                reply = await asyncio.wait_for(stream.read(), 15)
                assert reply.result is True
                print(f"after the outage the stream flipped in {(time.monotonic() - started) * 1000:.0f} ms")
            finally:
                await redis.aclose()
            await asyncio.to_thread(scaler.wait_health)
            stream.cancel()
    finally:
        scaler.proc.stop()
        server.stop()
