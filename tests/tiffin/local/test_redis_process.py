"""The embedded Redis under supervision: killed, it comes back on the same port, password and data, and
`server.json` names the new process; stopped, it leaves the folder free for the next owner."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import redis as sync_redis

from tiffin.local.redis_process import RedisProcess
from tiffin.local.redis_server import SERVER_FILE, EmbeddedRedis, running_url


async def test_a_killed_redis_is_restarted_with_its_port_password_and_data(tmp_path: Path) -> None:
    said: list[str] = []
    back = asyncio.Event()

    def say(message: str) -> None:
        said.append(message)
        if "redis is back" in message:
            back.set()

    server = EmbeddedRedis(tmp_path / "redis", log_to_stdout=True)
    proc = RedisProcess(server, tmp_path / "logs", say)
    (tmp_path / "logs").mkdir()
    await proc.start()
    try:
        client = sync_redis.Redis.from_url(server.url)
        client.set("kept", "yes")
        client.close()
        first = json.loads((server.data_dir / SERVER_FILE).read_text())
        assert proc.process is not None and first["pid"] == proc.process.pid
        os.kill(first["pid"], signal.SIGKILL)
        await asyncio.wait_for(back.wait(), 60)
        second = json.loads((server.data_dir / SERVER_FILE).read_text())
        assert second["port"] == first["port"] and second["pid"] != first["pid"]
        assert running_url(server.data_dir) == server.url  # same port, same password: REDIS_URL stays valid
        client = sync_redis.Redis.from_url(server.url)
        assert client.get("kept") == b"yes"
        client.close()
        assert any("redis exited with code -9; restarting" in line for line in said), said
        assert "Ready to accept connections" in (tmp_path / "logs" / "redis.log").read_text()
    finally:
        await proc.stop()
    assert running_url(server.data_dir) is None
    assert not (server.data_dir / SERVER_FILE).exists()
    successor = EmbeddedRedis(tmp_path / "redis")  # the folder's lock went with the stop
    await asyncio.to_thread(successor.start, lock_wait_s=0)
    await asyncio.to_thread(successor.stop)
