"""`python -m runtime.api`: one API server replica, configured from the environment (see runtime.config)."""

from __future__ import annotations

from aiohttp import web

from runtime.api.app import create_app
from runtime.config import ApiSettings
from tiffin.common import loop as event_loop
from tiffin.common.logs import setup_logging
from tiffin.contracts.exceptions import AppError

# After SIGTERM aiohttp waits this long for in-flight requests, cancels their request bodies, then waits as
# long again before cancelling them: streams get about 30 s in all to finish.
SHUTDOWN_TIMEOUT_S = 15.0


def main() -> None:
    settings = ApiSettings.from_env()
    setup_logging("api").info(
        "api_starting", deployment=settings.deployment.name, replica=settings.replica_id, port=settings.port
    )
    try:
        app = create_app(settings)
    except AppError as exc:  # a wrong application stops here, with what is wrong (the replica then restarts)
        raise SystemExit(f"tiffin: {settings.deployment.name}: {exc}") from None
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        handler_cancellation=True,  # a client that goes away cancels its request, and so the runner's work
        access_log=None,  # one structlog line per request instead
        print=None,
        loop=event_loop.new_loop(),
    )


if __name__ == "__main__":
    main()
