"""The GPU sleeping tier, the runner's side: vLLM's sleep mode (level 1) driven by keys.sleep.

Level 1 offloads the weights to host memory and frees the GPU's memory (weights and KV cache); waking reloads
the weights from host memory (0.1-6 s in vLLM's measurements) instead of a cold start. vLLM serves /sleep and
/wake_up only with `--enable-sleep-mode` and VLLM_SERVER_DEV_MODE=1 (runtime.runner.engine sets both when the
deployment has `scaling.sleep_period_s`), and only on CUDA/ROCm/XPU: `tiffin check` refuses it elsewhere.
"""

from __future__ import annotations

import aiohttp
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tiffin.contracts import keys

log = structlog.get_logger("runtime.runner")

SLEEP_LEVEL = 1
WAKE_POLL_S = 0.25  # how soon a sleeping runner notices a request: its wake is the user's wait
SLEEP_TIMEOUT_S = 120.0


async def sleep_wanted(redis: Redis, deployment: str, current: bool) -> bool:
    """Whether the scaling writer wants this deployment's runners asleep; `current` when Redis cannot say."""
    try:
        return bool(await redis.exists(keys.sleep(deployment)))
    except (RedisError, OSError):
        return current  # a Redis blip neither wakes nor sends to sleep


async def engine_call(http: aiohttp.ClientSession, base_url: str, path: str) -> bool:
    """POST /sleep?level=1 or /wake_up to the engine; True on 200."""
    try:
        timeout = aiohttp.ClientTimeout(total=SLEEP_TIMEOUT_S)
        async with http.post(f"{base_url}{path}", timeout=timeout) as resp:
            if resp.status == 200:
                return True
            log.error("engine_sleep_call_failed", path=path, status=resp.status, body=(await resp.text())[:300])
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.error("engine_sleep_call_failed", path=path, error=str(exc) or type(exc).__name__)
    return False


def sleep_path() -> str:
    return f"/sleep?level={SLEEP_LEVEL}"


WAKE_PATH = "/wake_up"
