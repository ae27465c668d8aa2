"""Entry point: `python -m interceptor` (settings from TIFFIN_* environment variables)."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from interceptor.app import admin_app, public_app
from interceptor.config import InterceptorSettings
from interceptor.janitor import sweep_forever
from interceptor.relay import Relay
from interceptor.replies import ReplyReader
from interceptor.routing import Router
from interceptor.server import start_public
from tiffin.config import load_deployments
from tiffin.exceptions import ConfigError
from tiffin.logs import setup_logging
from tiffin.redis_conn import connect


async def serve(settings: InterceptorSettings) -> None:
    """Run until SIGTERM/SIGINT, then drain: stop taking requests, let in-flight ones finish, stop."""
    log = setup_logging("interceptor")
    deployments = load_deployments(settings.config_paths)
    redis = connect(settings.redis_url, max_connections=512)
    reader = ReplyReader(redis, settings.interceptor_id, settings.reply_ttl_s)
    relay = Relay(redis, Router(deployments), reader, settings.reply_gap_grace_s, settings.edge)
    await relay.ensure_queues()
    await reader.start()

    public = await start_public(public_app(relay), settings.host, settings.port, None, settings.edge)
    admin = web.AppRunner(admin_app(relay, redis), access_log=None)
    await admin.setup()
    await web.TCPSite(admin, settings.admin_host, settings.admin_port).start()
    log.info(
        "listening",
        public=f"http://{settings.host}:{settings.port}",
        admin=f"http://{settings.admin_host}:{settings.admin_port}",
        deployments=[d.name for d in deployments],
        interceptor_id=settings.interceptor_id,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    janitor = asyncio.create_task(
        sweep_forever(redis, deployments, reader.key, settings.orphan_sweep_s, stop), name="janitor"
    )
    await stop.wait()
    await janitor

    # Shutdown order: report not-ready and refuse new work, drain in-flight, then stop infrastructure.
    relay.draining = True
    log.info("draining", in_flight=relay.in_flight, timeout_s=settings.drain_timeout_s)
    try:
        await asyncio.wait_for(relay.idle.wait(), settings.drain_timeout_s)
    except TimeoutError:
        log.warning("drain_timeout", in_flight=relay.in_flight)
    await public.cleanup()
    await reader.stop()
    await admin.cleanup()
    await redis.aclose()
    log.info("stopped")


def main() -> None:
    settings = InterceptorSettings.from_env()
    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        raise SystemExit(f"invalid deployment configuration:\n{exc}") from exc


if __name__ == "__main__":
    main()
