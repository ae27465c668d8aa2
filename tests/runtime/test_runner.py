"""The runner supervisor as a real process, with tests/upstream.py as its engine (`runner.command`).

Draining runners are stopped while a real API server streams through them; both report into a real Redis.
"""

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
from tests.runtime import NAME, StartApi, chat, until
from tiffin.common.redis_conn import connect
from tiffin.contracts.load import LoadReport, RunnerLoad
from tiffin.contracts.registry import Registry
from tiffin.local.ports import free_port
from tiffin.local.redis_server import EmbeddedRedis

REPLICA = "runner-1"
UPSTREAM = [sys.executable, "tests/upstream.py", "--port", "{port}", "--served-model-name", "{served_model_name}"]

StartRunner = Callable[..., Proc]
"""The `start_runner` fixture: `start_runner(command, env=None)`."""


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

    def start(command: list[str], env: dict[str, str] | None = None) -> Proc:
        config = tmp_path / "smol.yaml"
        deployment = {"name": NAME, "model": "model", "runner": {"command": command, "concurrency": 3}}
        config.write_text(json.dumps(deployment))  # JSON is YAML
        full_env = {
            "TIFFIN_CONFIG": str(config),
            "TIFFIN_DEPLOYMENT": NAME,
            "REDIS_URL": redis_server.url,
            "TIFFIN_RUNNER_PORT": str(free_port()),
            "TIFFIN_REPLICA_ID": REPLICA,
            # Long: an entry that goes away must have been deregistered, not expired.
            "TIFFIN_HEARTBEAT_TTL_S": "300",
            **(env or {}),
        }
        proc = Proc.module("runner", "runtime.runner", full_env, log_dir)
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


def events_named(proc: Proc, name: str) -> list[dict[str, object]]:
    return [e for e in log_events(proc) if e["event"] == name]


async def test_sigterm_lets_a_stream_in_flight_finish_before_stopping_the_engine(
    start_runner: StartRunner, start_api: StartApi, registry: Registry, redis: Redis
) -> None:
    proc = start_runner(UPSTREAM, {"TIFFIN_RUNNER_DRAIN_TIMEOUT_S": "60"})
    engine_url = str((await wait_registered(registry, proc))["url"])
    api = await start_api()
    words = " ".join(f"w{i}" for i in range(20))
    body = chat(words, stream=True, tiffin_test={"delay_s": 0.4})  # about 8 s
    received = b""
    engine_served_midway = False
    async with aiohttp.ClientSession() as http, http.post(f"{api.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200

        async def reported() -> bool:
            return await RunnerLoad(redis, NAME).at_runner(REPLICA) == 1

        await until(reported, what="the API server reports the request at the runner")
        proc.popen.send_signal(signal.SIGTERM)
        await until(lambda: bool(events_named(proc, "runner_draining")), what="the runner drains")
        async for data in resp.content.iter_any():
            received += data
            if not engine_served_midway and received.count(b"data: ") >= 12:
                # Seconds after the SIGTERM, well past the drain's minimum: a stopped engine would not listen.
                try:
                    async with http.get(f"{engine_url}/health") as health:
                        engine_served_midway = health.status == 200
                except aiohttp.ClientConnectionError:
                    break  # the engine was stopped under the stream
    assert engine_served_midway
    events = [e.removeprefix("data: ") for e in received.decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1]]
    assert "".join(d.get("content", "") for d in deltas) == f"echo: {words}"

    assert await asyncio.to_thread(proc.popen.wait, 30) == 0
    assert [e["in_flight"] for e in events_named(proc, "runner_draining")] == [1]
    drained = events_named(proc, "runner_drained")
    assert [(e["outcome"], e["in_flight"]) for e in drained] == [("idle", 0)]
    order = [e["event"] for e in log_events(proc)]
    assert order.index("runner_deregistered") < order.index("runner_draining")
    assert order.index("runner_drained") < order.index("engine_stopping")


async def test_sigterm_with_nothing_in_flight_stops_without_waiting_for_the_timeout(
    start_runner: StartRunner, start_api: StartApi, registry: Registry, redis: Redis
) -> None:
    proc = start_runner(UPSTREAM, {"TIFFIN_RUNNER_DRAIN_TIMEOUT_S": "60"})
    await wait_registered(registry, proc)
    await start_api(env={"TIFFIN_REPLICA_ID": "api-1"})

    async def api_reports() -> bool:
        return "api-1" in await RunnerLoad(redis, NAME).reports()

    await until(api_reports, what="the idle API server reports")
    proc.popen.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.popen.wait, 20) == 0  # well before the 60 s drain timeout
    drained = events_named(proc, "runner_drained")
    assert [(e["outcome"], e["in_flight"]) for e in drained] == [("idle", 0)]


async def test_a_second_sigterm_cuts_the_drain_short(
    start_runner: StartRunner, registry: Registry, redis: Redis
) -> None:
    proc = start_runner(UPSTREAM, {"TIFFIN_RUNNER_DRAIN_TIMEOUT_S": "300"})
    await wait_registered(registry, proc)
    # An API server that says it has a request at this runner (and never finishes it).
    await RunnerLoad(redis, NAME, ttl_s=300).report("api-stuck", LoadReport(runners={REPLICA: 1}))
    proc.popen.send_signal(signal.SIGTERM)
    await until(lambda: bool(events_named(proc, "runner_draining")), what="the runner drains")
    assert events_named(proc, "runner_draining")[0]["in_flight"] == 1
    assert proc.alive()
    proc.popen.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.popen.wait, 20) == 0
    assert [e["outcome"] for e in events_named(proc, "runner_drained")] == ["signal"]


async def test_without_redis_the_drain_ends_at_its_timeout(
    start_runner: StartRunner, tmp_path: Path, log_dir: Path
) -> None:
    own = EmbeddedRedis(tmp_path / "own-redis")
    own.start()
    try:
        proc = start_runner(UPSTREAM, {"REDIS_URL": own.url, "TIFFIN_RUNNER_DRAIN_TIMEOUT_S": "3"})
        client = connect(own.url)
        try:
            await wait_registered(Registry(client, NAME, "runner"), proc)
        finally:
            await client.aclose()
    finally:
        own.stop()
    proc.popen.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.popen.wait, 20) == 0
    assert events_named(proc, "drain_load_unavailable")
    drained = events_named(proc, "runner_drained")
    assert [(e["outcome"], e["in_flight"]) for e in drained] == [("timeout", None)]
