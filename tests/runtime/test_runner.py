"""The runner supervisor as a real process, with tests/upstream.py as its engine (`runner.command`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from tests.procs import Proc
from tests.runtime import until
from tiffin.redis_server import EmbeddedRedis, free_port
from tiffin.registry import Registry

NAME = "smol"
REPLICA = "runner-1"
UPSTREAM = [sys.executable, "tests/upstream.py", "--port", "{port}", "--served-model-name", "{served_model_name}"]

StartRunner = Callable[[list[str]], Proc]


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def log_events(proc: Proc) -> list[dict[str, object]]:
    """The runner's structlog lines (the engine's own output is mixed in and skipped)."""
    events = []
    for line in proc.log().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("component") == "runner":
                events.append(event)
    return events


@pytest.fixture
def registry(redis: Redis) -> Registry:
    return Registry(redis, NAME, "runner")


@pytest.fixture
async def start_runner(
    redis_server: EmbeddedRedis, redis: Redis, tmp_path: Path, log_dir: Path
) -> AsyncIterator[StartRunner]:
    """Start `python -m runtime.runner` with a given engine command (on an emptied Redis)."""
    procs: list[Proc] = []
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")

    def start(command: list[str]) -> Proc:
        config = tmp_path / "smol.yaml"
        deployment = {"name": NAME, "model": "model", "runner": {"command": command, "concurrency": 3}}
        config.write_text(json.dumps(deployment))  # JSON is YAML
        env = {
            "TIFFIN_CONFIG": str(config),
            "TIFFIN_DEPLOYMENT": NAME,
            "REDIS_URL": redis_server.url,
            "TIFFIN_RUNNER_PORT": str(free_port()),
            "TIFFIN_REPLICA_ID": REPLICA,
            # Long: an entry that goes away must have been deregistered, not expired.
            "TIFFIN_HEARTBEAT_TTL_S": "300",
        }
        proc = Proc.module("runner", "runtime.runner", env, log_dir)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        await asyncio.to_thread(proc.stop)


async def wait_registered(registry: Registry, proc: Proc) -> dict[str, object]:
    async def registered() -> bool:
        assert proc.alive(), proc.log()[-3000:]
        return REPLICA in await registry.ready()

    await until(registered, timeout_s=30, what="the runner registered")
    return (await registry.ready())[REPLICA]


async def engine_pid(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/health") as resp:
        pid: int = (await resp.json())["pid"]
    return pid


async def test_registers_when_ready_and_sigterm_deregisters_and_stops_the_engine(
    start_runner: StartRunner, registry: Registry
) -> None:
    proc = start_runner(UPSTREAM)
    info = await wait_registered(registry, proc)
    assert info["concurrency"] == 3
    url = str(info["url"])
    assert url.startswith("http://127.0.0.1:")
    pid = await engine_pid(url)
    assert pid_alive(pid)
    ready = [e for e in log_events(proc) if e["event"] == "runner_ready"]
    assert len(ready) == 1 and isinstance(ready[0]["load_s"], float)

    assert await asyncio.to_thread(proc.stop) == 0
    assert REPLICA not in await registry.ready()
    assert not pid_alive(pid)
    events = [e["event"] for e in log_events(proc)]
    assert events.index("runner_deregistered") < events.index("engine_stopping")  # no new work, then stop


async def test_an_engine_that_dies_is_deregistered_and_the_runner_exits_1(
    start_runner: StartRunner, registry: Registry
) -> None:
    proc = start_runner(UPSTREAM)
    info = await wait_registered(registry, proc)
    os.kill(await engine_pid(str(info["url"])), signal.SIGKILL)
    assert await asyncio.to_thread(proc.popen.wait, 30) == 1
    assert REPLICA not in await registry.ready()
    assert any(e["event"] == "engine_exited" and e["exit_code"] == -signal.SIGKILL for e in log_events(proc))


async def test_an_engine_that_exits_while_loading_fails_the_runner(
    start_runner: StartRunner, registry: Registry
) -> None:
    proc = start_runner([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert await asyncio.to_thread(proc.popen.wait, 30) == 1
    assert any(e["event"] == "engine_exited" and e["exit_code"] == 3 for e in log_events(proc))
    assert REPLICA not in await registry.ready()


async def test_a_failed_warm_up_keeps_the_runner_out_of_the_registry(
    start_runner: StartRunner, registry: Registry
) -> None:
    # The engine answers /health but serves another model name, so the warm-up generation gets a 404.
    command = [*UPSTREAM[:-1], "another-model"]
    proc = start_runner(command)
    assert await asyncio.to_thread(proc.popen.wait, 30) == 1
    failed = [e for e in log_events(proc) if e["event"] == "warmup_failed"]
    assert failed and failed[0]["status"] == 404
    assert not any(e["event"] == "runner_ready" for e in log_events(proc))
    assert REPLICA not in await registry.ready()
    pid = next(e["pid"] for e in log_events(proc) if e["event"] == "engine_started")
    assert isinstance(pid, int) and not pid_alive(pid)  # the engine was stopped before the runner exited


async def test_sigterm_while_the_engine_loads_stops_it_and_exits_0(start_runner: StartRunner) -> None:
    proc = start_runner([sys.executable, "-c", "import time; time.sleep(120)"])  # never healthy
    await until(lambda: any(e["event"] == "engine_started" for e in log_events(proc)), what="the engine started")
    pid = next(e["pid"] for e in log_events(proc) if e["event"] == "engine_started")
    assert isinstance(pid, int) and pid_alive(pid)
    assert await asyncio.to_thread(proc.stop) == 0
    assert not pid_alive(pid)
