"""The sleeping tier on a GPU: a real runner with vLLM sleeps when asked, leaves the registry, wakes and serves.

Needs a CUDA GPU (vLLM's sleep mode exists only there); elsewhere it is skipped with the reason printed (`-ra`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from tests.procs import Proc
from tests.runtime import until
from tiffin.common.gpu import sleep_mode_supported
from tiffin.contracts import keys
from tiffin.contracts.registry import Registry
from tiffin.local.ports import free_port
from tiffin.local.redis_server import EmbeddedRedis

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not sleep_mode_supported(), reason="vLLM's sleep mode needs a CUDA GPU; this machine has none"),
]

NAME = "smollm2"


async def test_a_sleeping_runner_frees_the_gpu_leaves_the_registry_and_wakes_to_serve(
    redis_server: EmbeddedRedis, redis: Redis, smollm2_cache: Path, tmp_path: Path, log_dir: Path
) -> None:
    config = tmp_path / "smollm2.yaml"
    config.write_text(json.dumps({"name": NAME, "model": "smollm2", "scaling": {"sleep_period_s": 600},
                                  "runner": {"engine_args": {"max_model_len": 512}}}))  # fmt: skip
    port = free_port()
    env = {"TIFFIN_CONFIG": str(config), "TIFFIN_DEPLOYMENT": NAME, "REDIS_URL": redis_server.url,
           "TIFFIN_CACHE_DIR": str(smollm2_cache), "TIFFIN_RUNNER_PORT": str(port),
           "TIFFIN_REPLICA_ID": "r1"}  # fmt: skip
    proc = Proc.module("runner", "runtime.runner", env, log_dir)
    registry = Registry(redis, NAME, "runner")
    url = f"http://127.0.0.1:{port}"
    try:
        await until(lambda: _registered(registry), timeout_s=600, what="the runner registered")
        await redis.set(keys.sleep(NAME), "1")
        async with aiohttp.ClientSession() as http:

            async def asleep() -> bool:
                async with http.get(f"{url}/is_sleeping") as resp:
                    return bool((await resp.json())["is_sleeping"]) and not await _registered(registry)

            await until(asleep, timeout_s=120, what="the engine asleep and out of the registry")
            await redis.delete(keys.sleep(NAME))
            await until(lambda: _registered(registry), timeout_s=120, what="the runner awake and registered")
            body = {"model": NAME, "messages": [{"role": "user", "content": "What is the capital of France?"}],
                    "max_tokens": 20, "temperature": 0}  # fmt: skip
            async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                assert "Paris" in (await resp.json())["choices"][0]["message"]["content"]
        assert await asyncio.to_thread(proc.stop, 120) == 0
    finally:
        await asyncio.to_thread(proc.stop, 120)


async def _registered(registry: Registry) -> bool:
    return "r1" in await registry.ready()
