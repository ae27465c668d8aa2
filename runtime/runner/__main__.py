"""`python -m runtime.runner`: one runner replica, configured from the environment (see runtime.config)."""

from __future__ import annotations

import asyncio
import sys

from runtime.config import RunnerSettings
from runtime.runner import forked
from runtime.runner.supervisor import Supervisor
from tiffin.common.logs import setup_logging
from tiffin.contracts.exceptions import ModelError


def main() -> int:
    settings = RunnerSettings.from_env()
    # Started by the runner pool (vLLM already imported): the engine is forked from here, before any event
    # loop or thread exists (a fork keeps only the calling thread).
    from_pool = forked.preimported() and not settings.deployment.runner.command
    log = setup_logging("runner")
    log.info("runner_starting", deployment=settings.deployment.name, replica=settings.replica_id,
             port=settings.port, from_pool=from_pool)  # fmt: skip
    engine = None
    if from_pool:
        try:
            engine = forked.start(settings)
        except ModelError as exc:
            log.error("model_unavailable", error=str(exc))
            return 1
    return asyncio.run(_run(settings, engine))


async def _run(settings: RunnerSettings, engine: forked.ForkedEngine | None) -> int:
    return await Supervisor(settings, engine=engine).run()  # built inside the loop that runs it


if __name__ == "__main__":
    sys.exit(main())
