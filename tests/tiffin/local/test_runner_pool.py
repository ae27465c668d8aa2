"""The runner pool with the real vLLM: a runner forked from it serves SmolLM2, drains on SIGTERM and exits 0.

The pool process, the runner and its engine are real processes; tiffin up's own classes (RunnerPool,
ManagedProcess) start and stop them, and the runner registers in a real Redis.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from tests.runtime import until
from tiffin.contracts.registry import Registry
from tiffin.contracts.runnerpool import read_report
from tiffin.local.pool import RunnerPool
from tiffin.local.ports import free_port
from tiffin.local.processes import ManagedProcess, ProcessSpec
from tiffin.local.redis_server import EmbeddedRedis

pytestmark = pytest.mark.vllm

NAME = "smollm2"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def runner_events(log: Path) -> list[dict[str, object]]:
    """The runner's structlog lines (the engine's own output is mixed in and skipped)."""
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("component") == "runner":
                events.append(event)
    return events


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (the engine and its engine core); zombies count as gone."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


async def serve_then_stop(runner: ManagedProcess, redis: Redis, replica: str, port: int) -> list[dict[str, object]]:
    """Wait until the runner registers, ask SmolLM2 a question at it, stop it (SIGTERM); its log events."""
    registry = Registry(redis, NAME, "runner")

    async def registered() -> bool:
        assert runner.running, runner.log_path.read_text()[-4000:]
        return replica in await registry.ready()

    await until(registered, timeout_s=600, what=f"{replica} warmed up and registered")
    body = {"model": NAME, "messages": QUESTION, "max_tokens": 20, "temperature": 0}
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert "Paris" in answer["choices"][0]["message"]["content"]
    engine_pid = next(int(str(e["pid"])) for e in runner_events(runner.log_path) if e["event"] == "engine_started")

    await runner.stop()  # SIGTERM, as tiffin up's scale-down sends
    assert runner.process is not None and runner.process.returncode == 0, runner.log_path.read_text()[-4000:]
    assert replica not in await registry.ready()
    events = runner_events(runner.log_path)
    names = [e["event"] for e in events]
    assert names.index("runner_deregistered") < names.index("runner_drained") < names.index("engine_stopping")
    # The engine and the engine core it forked go (the core's SIGKILL is the runner's last step).
    await until(lambda: not group_alive(engine_pid), timeout_s=30, what="the engine's processes gone")
    return events


async def test_a_runner_forked_from_the_pool_serves_drains_and_exits_like_any_other(
    redis_server: EmbeddedRedis, redis: Redis, smollm2_cache: Path, tmp_path: Path, log_dir: Path
) -> None:
    said: list[str] = []
    config = tmp_path / "smollm2.yaml"
    config.write_text(json.dumps({"name": NAME, "model": "smollm2", "runner": {"engine_args": {"max_model_len": 512}}}))
    env = {"TIFFIN_CONFIG": str(config), "REDIS_URL": redis_server.url, "TIFFIN_CACHE_DIR": str(smollm2_cache)}
    pool = RunnerPool(tmp_path / "pool.sock", env, log_dir, said.append)
    await pool.start()
    stop_report = asyncio.Event()
    report = asyncio.create_task(pool.report(redis, stop_report))
    runners: list[ManagedProcess] = []

    def runner(replica: str, port: int) -> ManagedProcess:
        own = {"TIFFIN_DEPLOYMENT": NAME, "TIFFIN_REPLICA_ID": replica, "TIFFIN_RUNNER_PORT": str(port)}
        spec = ProcessSpec(f"smollm2-{replica}", "runtime.runner", {**env, **own}, 100, launcher=pool)
        runners.append(ManagedProcess(spec, log_dir, said.append))
        return runners[-1]

    try:
        await until(pool.socket_path.exists, timeout_s=300, what="the pool imported vLLM and listens")
        port = free_port()
        forked = runner("r1", port)
        await forked.start()
        assert pool.started == 1 and pool.fallbacks == 0, said

        async def pool_reported() -> bool:
            report = await read_report(redis)
            return report is not None and report.state == "ready" and report.rss_bytes > 100 * 2**20

        await until(pool_reported, timeout_s=30, what="the pool's memory reported in Redis")
        events = await serve_then_stop(forked, redis, "r1", port)
        assert events[0]["event"] == "runner_starting" and events[0]["from_pool"] is True
        assert any(e["event"] == "engine_started" and e["forked"] is True for e in events)

        # The pool gone (a crash): the next runner starts plainly, and serves and drains the same way.
        assert pool.process.process is not None
        pool.process.process.send_signal(signal.SIGKILL)
        await until(lambda: pool.process.restarts > 0, timeout_s=30, what="the pool's crash noticed")
        # Its replacement is importing again; the dead one's socket refuses connections meanwhile.
        port = free_port()
        plain = runner("r2", port)
        await plain.start()
        assert (pool.started, pool.fallbacks) == (1, 1)
        assert any("runner pool unavailable" in line for line in said)
        events = await serve_then_stop(plain, redis, "r2", port)
        assert events[0]["event"] == "runner_starting" and events[0]["from_pool"] is False
        assert any(e["event"] == "engine_started" and e["forked"] is False for e in events)
    finally:
        for proc in runners:
            await proc.stop()
        stop_report.set()
        await report
        await pool.stop()
