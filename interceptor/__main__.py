"""Entry point: `python -m interceptor` (settings from TIFFIN_* environment variables)."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from interceptor import tls_metrics
from interceptor.app import admin_app, public_app
from interceptor.auth import KeyGate
from interceptor.config import InterceptorSettings
from interceptor.janitor import sweep_forever
from interceptor.relay import Relay
from interceptor.replies import READ_BLOCK_MS, ReplyReader
from interceptor.routing import Router
from interceptor.server import start_public
from tiffin.common import loop as event_loop
from tiffin.common.logs import setup_logging
from tiffin.common.redis_conn import connect_bounded
from tiffin.contracts.config import load_deployments
from tiffin.contracts.exceptions import ConfigError, TLSError
from tiffin.tls import CertificateStore

# The reader's reads block for READ_BLOCK_MS on purpose: its socket waits that long plus a margin.
READER_SOCKET_TIMEOUT_S = READ_BLOCK_MS / 1000 + 5.0


async def serve(settings: InterceptorSettings) -> None:
    """Run until SIGTERM/SIGINT, then drain: stop taking requests, let in-flight ones finish, stop."""
    log = setup_logging("interceptor")
    certificates = CertificateStore.load(settings.tls) if settings.tls else None
    if certificates is not None:
        tls_metrics.register(certificates)
    # An empty folder is a valid start on Kubernetes (no TiffinDeployment yet): every model answers 404 until
    # the controller writes the folder's ConfigMap and rolls this pod.
    deployments = load_deployments(settings.config_paths, allow_empty=True)
    if not deployments:
        log.warning("no_deployments", config=[str(p) for p in settings.config_paths])
    # Requests share a bounded pool: a burst waits briefly for a connection rather than failing (see
    # TIFFIN_REDIS_MAX_CONNECTIONS). The reply reader has a client of its own, so no burst can delay replies.
    redis = connect_bounded(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout_s=settings.edge.redis_timeout_s,
        batched=True,  # requests move in step under load: their commands of one loop turn go out together
    )
    reader_redis = connect_bounded(settings.redis_url, max_connections=2, timeout_s=READER_SOCKET_TIMEOUT_S)
    reader = ReplyReader(reader_redis, settings.interceptor_id, settings.reply_ttl_s)
    gate = KeyGate(redis, settings.keys_poll_s, settings.key_slot_lease_s)
    await gate.load()
    relay = Relay(redis, Router(deployments), reader, settings.reply_gap_grace_s, gate, settings.edge)
    await relay.ensure_queues()
    await reader.start()

    ssl_context = certificates.context if certificates is not None else None
    public = await start_public(public_app(relay), settings.host, settings.port, ssl_context, settings.edge)
    admin = web.AppRunner(admin_app(relay, redis, settings.admin_token), access_log=None)
    await admin.setup()
    await web.TCPSite(admin, settings.admin_host, settings.admin_port).start()
    log.info(
        "listening",
        public=f"{settings.scheme}://{settings.host}:{settings.port}",
        tls_hosts=[p.hosts for p in certificates.pairs] if certificates else None,
        admin=f"http://{settings.admin_host}:{settings.admin_port}",
        deployments=[d.name for d in deployments],
        open_deployments=[d.name for d in deployments if not d.auth.require_api_key],
        api_keys=len(gate.keys),
        interceptor_id=settings.interceptor_id,
    )
    if certificates is None:
        log.warning("plain_http", detail="TIFFIN_PLAIN_HTTP=1: requests, answers and API keys travel unencrypted; "
                    "meant only behind a TLS-terminating proxy")  # fmt: skip

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    janitor = asyncio.create_task(
        sweep_forever(redis, deployments, reader.key, settings.orphan_sweep_s, stop), name="janitor"
    )
    renewals = asyncio.create_task(certificates.watch(settings.tls_reload_s, stop)) if certificates else None
    # Keys stay fresh and slots stay renewed until the drain is over: in-flight requests still hold them.
    gate_stop = asyncio.Event()
    keys_task = asyncio.create_task(gate.run(gate_stop), name="api-keys")
    # The history is flushed until the drain is over, then once more: the drained requests count too.
    history_task = asyncio.create_task(relay.history.run(redis, gate_stop, settings.history_flush_s), name="history")
    await stop.wait()
    await janitor
    if renewals is not None:
        await renewals

    # Shutdown order: report not-ready and refuse new work, drain in-flight, then stop infrastructure.
    relay.draining = True
    log.info("draining", in_flight=relay.in_flight, timeout_s=settings.drain_timeout_s)
    try:
        await asyncio.wait_for(relay.idle.wait(), settings.drain_timeout_s)
    except TimeoutError:
        log.warning("drain_timeout", in_flight=relay.in_flight)
    await public.cleanup()
    # Withdrawals still waiting for Redis end here: their requests' states lapse by themselves (TTL).
    if len(relay.withdrawals):
        log.warning("withdrawals_abandoned", requests=len(relay.withdrawals))
    await relay.withdrawals.stop()
    gate_stop.set()
    await keys_task
    await history_task
    await reader.stop()
    await admin.cleanup()
    await reader_redis.aclose()
    await redis.aclose()
    log.info("stopped")


def main() -> None:
    settings = InterceptorSettings.from_env()
    try:
        event_loop.run(serve(settings))
    except ConfigError as exc:
        raise SystemExit(f"invalid deployment configuration:\n{exc}") from exc
    except TLSError as exc:
        raise SystemExit(f"invalid TLS configuration, nothing was started: {exc}") from exc


if __name__ == "__main__":
    main()
