"""Entry point: `python -m tiffin.kube.controller`, the operator that applies each TiffinDeployment."""

from __future__ import annotations

import asyncio
import signal

from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import Configuration

from tiffin.common.logs import setup_logging
from tiffin.common.redis_conn import connect
from tiffin.kube.controller.config import ControllerSettings
from tiffin.kube.controller.health import serve_health
from tiffin.kube.controller.kubeapi import KubeApi
from tiffin.kube.controller.leader import LeaderElector
from tiffin.kube.controller.run import Controller


async def _configuration() -> Configuration:
    """In a pod: its service account; elsewhere: KUBECONFIG (or ~/.kube/config)."""
    configuration = Configuration()
    try:
        kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except kube_config.ConfigException:
        await kube_config.load_kube_config(client_configuration=configuration)
    return configuration


async def serve(settings: ControllerSettings) -> int:
    log = setup_logging("controller")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    api = KubeApi(await _configuration())
    redis = connect(settings.redis_url)
    elector = LeaderElector(api, settings.namespace, settings.lease_name, settings.identity,
                            settings.lease_duration_s, settings.lease_renew_s)  # fmt: skip
    health = await serve_health(elector, settings.host, settings.port)
    log.info("starting", namespace=settings.namespace, identity=settings.identity, lease=settings.lease_name,
             health=f"http://{settings.host}:{settings.port}/healthz")  # fmt: skip
    try:
        await Controller(api, redis, settings.platform, elector).run(stop)
    finally:
        await health.cleanup()
        await redis.aclose()
        await api.close()
    log.info("stopped")
    return 0


def main() -> None:
    settings = ControllerSettings.from_env()
    raise SystemExit(asyncio.run(serve(settings)))


if __name__ == "__main__":
    main()
