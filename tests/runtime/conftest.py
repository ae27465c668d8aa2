"""Fixtures shared by the runtime tests: API servers and test upstreams as real processes."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.procs import Proc
from tests.runtime import NAME, Server, StartApi
from tiffin.contracts.registry import Registry
from tiffin.local.ports import free_port
from tiffin.local.redis_server import EmbeddedRedis


@pytest.fixture
async def runners(redis: Redis, log_dir: Path) -> AsyncIterator[list[Server]]:
    """Two tests/upstream.py servers, registered as runners r1 and r2 of the deployment."""
    servers = []
    for _ in range(2):
        port = free_port()
        args = [sys.executable, "tests/upstream.py", "--port", str(port), "--served-model-name", NAME]
        servers.append(Server(Proc(f"upstream-{port}", args, {}, log_dir), port))
    registry = Registry(redis, NAME, "runner", ttl_s=300)
    for index, server in enumerate(servers, 1):
        await asyncio.to_thread(server.proc.wait_http, f"{server.url}/health")
        await registry.register(f"r{index}", {"url": server.url, "concurrency": 2, "started_at": time.time()})
    yield servers
    for server in servers:
        await asyncio.to_thread(server.proc.stop)


@pytest.fixture
async def start_api(
    redis_server: EmbeddedRedis, redis: Redis, tmp_path: Path, log_dir: Path
) -> AsyncIterator[StartApi]:
    """Start `python -m runtime.api` for the deployment, with `limits` overridden (on an emptied Redis).

    `env` adds or overrides environment variables (TIFFIN_REPLICA_ID, TIFFIN_HEARTBEAT_TTL_S, ...); `app` names
    an application (`module:Class`) whose module the test put in tmp_path.
    """
    started: list[Server] = []
    (tmp_path / "api-model").mkdir()
    (tmp_path / "api-model" / "config.json").write_text("{}")

    async def start(env: dict[str, str] | None = None, app: str | None = None, **limits: float) -> Server:
        deployment: dict[str, Any] = {
            "name": NAME,
            "model": str(tmp_path / "api-model"),
            "routing": {"models": ["smol-alias"]},
            "runner": {"concurrency": 2},
            "limits": limits,
        }
        if app is not None:  # `module:Class`, its module in tmp_path (next to the config)
            deployment["app"] = app
        config = tmp_path / f"{NAME}-api-{len(started)}.yaml"
        config.write_text(json.dumps(deployment))  # JSON is YAML
        port = free_port()
        full_env = {
            "TIFFIN_CONFIG": str(config),
            "TIFFIN_DEPLOYMENT": NAME,
            "REDIS_URL": redis_server.url,
            "TIFFIN_API_PORT": str(port),
            **(env or {}),
        }
        server = Server(Proc.module(f"api-{port}", "runtime.api", full_env, log_dir), port)
        started.append(server)
        await asyncio.to_thread(server.proc.wait_http, f"{server.url}/health")
        return server

    yield start
    for server in started:
        await asyncio.to_thread(server.proc.stop)
