"""The controller's probe endpoint: `GET /healthz` answers while its event loop runs, with who leads.

Every candidate is healthy, leader or not: a passive controller waiting for the lease is doing its job.
"""

from __future__ import annotations

from aiohttp import web

from tiffin.kube.controller.leader import LeaderElector

ELECTOR = web.AppKey("elector", LeaderElector)


async def _healthz(request: web.Request) -> web.Response:
    elector = request.app[ELECTOR]
    return web.json_response({"status": "ok", "identity": elector.identity, "leader": elector.is_leader})


async def serve_health(elector: LeaderElector, host: str, port: int) -> web.AppRunner:
    """Start the probe listener; the caller cleans the returned runner up."""
    app = web.Application()
    app[ELECTOR] = elector
    app.router.add_get("/healthz", _healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise SystemExit(
            f"cannot listen on {host}:{port} (TIFFIN_CONTROLLER_HOST / TIFFIN_CONTROLLER_PORT): {exc}"
        ) from exc
    return runner
