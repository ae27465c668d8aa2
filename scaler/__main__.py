"""Entry point: `python -m scaler`, KEDA's external scaler for every deployment in TIFFIN_CONFIG."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from redis.asyncio import Redis
from redis.exceptions import RedisError

from scaler.config import ScalerSettings
from scaler.service import SERVICE_NAME, ExternalScaler
from scaler.wake import WakeHub
from tiffin.common.logs import setup_logging
from tiffin.common.redis_conn import connect
from tiffin.contracts.config import load_deployments
from tiffin.contracts.exceptions import ConfigError

HEALTH_INTERVAL_S = 2.0
HEALTH_SERVICES = ("", SERVICE_NAME)


async def _redis_answers(redis: Redis) -> bool:
    try:
        # Longer than one tick: after a Redis restart redis-py's first PING may retry on a stale connection.
        async with asyncio.timeout(HEALTH_INTERVAL_S * 2):
            return bool(await redis.ping())
    except (RedisError, OSError, TimeoutError):
        return False


async def _report_health(servicer: health.aio.HealthServicer, redis: Redis, wakes: WakeHub) -> None:
    """SERVING only while wakes can be heard and Redis answers PING; re-checked every HEALTH_INTERVAL_S."""
    log = structlog.get_logger("scaler.health")
    last: bool | None = None
    while True:
        if not wakes.subscribed.is_set():
            # A (re)subscription is reported at once rather than at the next tick.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEALTH_INTERVAL_S):
                    await wakes.subscribed.wait()
        ok = wakes.subscribed.is_set() and await _redis_answers(redis)
        if ok != last:
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in HEALTH_SERVICES:
                await servicer.set(name, status)
            (log.info if ok else log.warning)("health", serving=ok)
            last = ok
        if wakes.subscribed.is_set():
            await asyncio.sleep(HEALTH_INTERVAL_S)


async def serve(settings: ScalerSettings) -> int:
    log = setup_logging("scaler")
    # An empty folder is a valid start on Kubernetes (no TiffinDeployment yet): KEDA's calls for a deployment
    # answer NOT_FOUND until the controller writes the folder's ConfigMap and rolls this pod.
    deployments = load_deployments(settings.config_paths, allow_empty=True)
    if not deployments:
        log.warning("no_deployments", config=[str(p) for p in settings.config_paths])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    redis = connect(settings.redis_url)
    wakes = WakeHub(redis)
    scaler = ExternalScaler(redis, deployments, wakes, settings.poll_s)
    health_servicer = health.aio.HealthServicer()
    for name in HEALTH_SERVICES:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    # Without SO_REUSEPORT a second scaler on the same port fails to start instead of sharing its traffic.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    scaler.add_to(server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_insecure_port(settings.address)
    except RuntimeError as exc:
        await redis.aclose()
        raise SystemExit(
            f"cannot listen on {settings.address} (TIFFIN_SCALER_HOST / TIFFIN_SCALER_PORT): {exc}"
        ) from exc
    # Subscribed before anything can report SERVING: health waits for the subscription.
    wakes.start()
    await server.start()
    reporter = asyncio.create_task(_report_health(health_servicer, redis, wakes), name="health")
    log.info(
        "serving",
        address=f"{settings.address.rsplit(':', 1)[0]}:{port}",
        deployments=sorted(d.name for d in deployments),
        poll_s=settings.poll_s,
    )
    await stop.wait()

    log.info("stopping")
    reporter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reporter
    await health_servicer.enter_graceful_shutdown()
    scaler.stop()
    await server.stop(settings.grace_s)
    await wakes.close()
    await redis.aclose()
    log.info("stopped")
    return 0


def main() -> None:
    settings = ScalerSettings.from_env()
    try:
        raise SystemExit(asyncio.run(serve(settings)))
    except ConfigError as exc:
        raise SystemExit(f"invalid deployment configuration:\n{exc}") from exc


if __name__ == "__main__":
    main()
