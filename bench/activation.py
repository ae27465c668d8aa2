"""How fast KEDA hears that a deployment at zero has work: StreamIsActive's flip, pushed vs polled.

    .venv/bin/python bench/activation.py [--trials 50] [--poll 1.0]

Runs a real Redis and `python -m scaler`. Each trial opens a StreamIsActive stream on a deployment at rest
(first answer: false), enqueues one request the way the interceptor does, and times until the stream says true.

- pushed: the deployment is cold (no replica registered), so the enqueue script publishes a wake and the
  scaler re-evaluates at once.
- polled: the deployment's registries hold (fake) ready replicas, so no wake is published and only the
  scaler's poll (`--poll` seconds) notices: the latency activation would have without the wake channel.

A random delay before each enqueue keeps it out of phase with the stream's poll timer, as real arrivals are.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tiffin.common.redis_conn import connect  # noqa: E402
from tiffin.contracts import keys  # noqa: E402
from tiffin.contracts.frames import Envelope  # noqa: E402
from tiffin.contracts.queue import DeploymentQueue  # noqa: E402
from tiffin.contracts.registry import Registry  # noqa: E402
from tiffin.local.ports import free_port  # noqa: E402
from tiffin.local.redis_server import EmbeddedRedis  # noqa: E402
from tiffin.proto import externalscaler_pb2 as pb  # noqa: E402
from tiffin.proto import externalscaler_pb2_grpc as pb_grpc  # noqa: E402

# The generated stub is untyped; its calls return Any either way.
make_stub: Callable[[grpc.aio.Channel], Any] = pb_grpc.ExternalScalerStub
MODES = {"pushed": "cold", "polled": "warm"}  # mode -> deployment name


def write_config(folder: Path) -> str:
    (folder / "model").mkdir()
    (folder / "model" / "config.json").write_text("{}")
    paths = []
    for name in MODES.values():
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "model": str(folder / "model"), "scaling": {"idle_period_s": 0}}))
        paths.append(str(path))
    return os.pathsep.join(paths)


def wait_serving(address: str, scaler: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    with grpc.insecure_channel(address) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)  # (types-grpcio-health-checking lists no methods)
        while True:
            assert scaler.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)


async def trial(stub: Any, queue: DeploymentQueue, poll_s: float) -> float:
    """Seconds from the enqueue to the stream's `true`."""
    redis, name = queue.redis, queue.deployment
    await redis.delete(keys.queue(name), keys.activity(name), keys.waking(name))
    ref = pb.ScaledObjectRef(name=name, namespace="bench", scalerMetadata={"deployment": name, "component": "api"})
    stream = stub.StreamIsActive(ref)
    try:
        assert (await stream.read()).result is False
        await asyncio.sleep(random.uniform(0, poll_s))
        envelope = Envelope(request_id=uuid.uuid4().hex, reply_to=keys.reply("bench"), path="/v1/completions",
                            body=b"{}")  # fmt: skip
        started = time.perf_counter()
        await queue.admit(envelope, max_waiting=10, ttl_s=60)
        reply = await asyncio.wait_for(stream.read(), poll_s * 3 + 5)
        elapsed = time.perf_counter() - started
        assert reply.result is True
        return elapsed
    finally:
        stream.cancel()


def summary(name: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
    return (f"{name:8} {len(ms):>6} {statistics.median(ms):9.2f} {p95:9.2f} {ms[-1]:9.2f} "
            f"{statistics.mean(ms):9.2f}")  # fmt: skip


async def measure(address: str, redis_url: str, trials: int, poll_s: float) -> dict[str, list[float]]:
    redis = connect(redis_url)
    try:
        # Ready replicas make "warm" warm: its enqueues publish no wake.
        for component in keys.COMPONENTS:
            await Registry(redis, "warm", component, ttl_s=3600).register("bench", {"url": "http://bench"})
        async with grpc.aio.insecure_channel(address) as channel:
            stub = make_stub(channel)
            results: dict[str, list[float]] = {mode: [] for mode in MODES}
            for _ in range(trials):
                for mode, name in MODES.items():
                    results[mode].append(await trial(stub, DeploymentQueue(redis, name), poll_s))
            return results
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--poll", type=float, default=1.0, help="the scaler's TIFFIN_SCALER_POLL_S")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        redis_server = EmbeddedRedis(folder / "redis")
        redis_server.start()
        address = f"127.0.0.1:{free_port()}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_server.url,
               "TIFFIN_CONFIG": write_config(folder), "TIFFIN_SCALER_PORT": address.rsplit(":", 1)[1],
               "TIFFIN_SCALER_POLL_S": str(args.poll), "TIFFIN_LOG_LEVEL": "warning"}  # fmt: skip
        log_path = folder / "scaler.log"
        with log_path.open("w") as log:
            scaler = subprocess.Popen([sys.executable, "-m", "scaler"], env=env, cwd=ROOT, stdout=log,
                                      stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_serving(address, scaler, log_path)
            results = asyncio.run(measure(address, redis_server.url, args.trials, args.poll))
        finally:
            scaler.terminate()
            scaler.wait(30)
            redis_server.stop()
    print(f"\nStreamIsActive flip after an enqueue at zero, poll interval {args.poll:g} s")
    print(f"{'':8} {'trials':>6} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9} {'mean ms':>9}")
    for mode, values in results.items():
        print(summary(mode, values))
    ratio = statistics.median(results["polled"]) / statistics.median(results["pushed"])
    print(f"pushed is x{ratio:.0f} faster at p50")


if __name__ == "__main__":
    main()
