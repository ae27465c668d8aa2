"""`python -m runtime.runner`: one runner replica, configured from the environment (see runtime.config)."""

from __future__ import annotations

import asyncio
import sys

from runtime.config import RunnerSettings
from runtime.runner.supervisor import Supervisor
from tiffin.common.logs import setup_logging


def main() -> int:
    settings = RunnerSettings.from_env()
    setup_logging("runner").info(
        "runner_starting", deployment=settings.deployment.name, replica=settings.replica_id, port=settings.port
    )
    return asyncio.run(_run(settings))


async def _run(settings: RunnerSettings) -> int:
    return await Supervisor(settings).run()  # built inside the loop that runs it


if __name__ == "__main__":
    sys.exit(main())
