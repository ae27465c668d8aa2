"""Entry point: `python -m proxy`, the sidecar beside one API server (settings from TIFFIN_* variables)."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
from redis.asyncio import Redis
from redis.exceptions import RedisError

from proxy.config import ProxySettings
from proxy.worker import Proxy
from tiffin.common import loop as event_loop
from tiffin.common.backoff import Backoff
from tiffin.common.logs import setup_logging
from tiffin.common.probe import wait_until_ok
from tiffin.common.redis_conn import connect
from tiffin.contracts.config import load_deployments
from tiffin.contracts.exceptions import ConfigError
from tiffin.contracts.queue import DeploymentQueue
from tiffin.contracts.registry import Registry


async def serve(settings: ProxySettings) -> int:
    log = setup_logging("proxy")
    deployment = next((d for d in load_deployments(settings.config_paths) if d.name == settings.deployment), None)
    if deployment is None:
        raise SystemExit(f"TIFFIN_DEPLOYMENT={settings.deployment!r} is not in {settings.config_paths}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # Requests' commands of one loop turn go out together (take, answer, end, finish, sends...); the blocking
    # XREADGROUP has a client of its own, as it would hold up any batch it joined (see redis_batch).
    redis = connect(settings.redis_url, max_connections=deployment.api.concurrency * 2 + 8, batched=True)
    reader = connect(settings.redis_url, max_connections=2)
    queue = DeploymentQueue(redis, deployment.name, reader=reader)
    registry = Registry(redis, deployment.name, "api", settings.heartbeat_ttl_s)
    connector = aiohttp.TCPConnector(limit=deployment.api.concurrency + 4)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Started while Redis is down (or restarting): wait for it here rather than exit into a crash loop.
        retry = Backoff("proxy_start")
        while not stop.is_set():
            try:
                await queue.ensure_group()
                break
            except (RedisError, OSError) as exc:
                await retry.failed(exc, stop)
        retry.succeeded()
        health = settings.upstream_url + "/health"
        if not await wait_until_ok(session, health, stop, settings.ready_timeout_s):
            log.error("upstream_not_ready", upstream=settings.upstream_url)
            await _close(redis, reader)
            return 0 if stop.is_set() else 1
        proxy = Proxy(
            deployment, queue, registry, session, settings.replica_id, settings.upstream_url, settings.cancel_poll_s
        )
        info = {"upstream": settings.upstream_url, "concurrency": deployment.api.concurrency, "started_at": time.time()}
        async with registry.keep(settings.replica_id, info):
            log.info("consuming", deployment=deployment.name, replica=settings.replica_id, upstream=info["upstream"])
            consumer = asyncio.create_task(proxy.consume(), name="consume")
            reclaimer = asyncio.create_task(proxy.reclaim_loop(settings.reclaim_interval_s), name="reclaim")
            drained = asyncio.Event()  # cancellations are heard until in-flight requests are done
            canceller = asyncio.create_task(proxy.cancel_loop(drained), name="cancels")
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({consumer, stopped}, return_when=asyncio.FIRST_COMPLETED)
            # Shutdown order: stop reading new work, finish in-flight requests, then leave the registry.
            proxy.stopping.set()
            await asyncio.gather(consumer, reclaimer, return_exceptions=True)
            stopped.cancel()
            await proxy.drain(settings.drain_timeout_s)
            drained.set()
            await canceller
            if consumer.done() and not consumer.cancelled() and consumer.exception() is not None:
                log.error("consumer_failed", error=repr(consumer.exception()))
                await _close(redis, reader)
                return 1
    await _close(redis, reader)
    log.info("stopped")
    return 0


async def _close(*clients: Redis) -> None:
    for client in clients:
        await client.aclose()


def main() -> None:
    settings = ProxySettings.from_env()
    try:
        raise SystemExit(event_loop.run(serve(settings)))
    except ConfigError as exc:
        raise SystemExit(f"invalid deployment configuration:\n{exc}") from exc


if __name__ == "__main__":
    main()
