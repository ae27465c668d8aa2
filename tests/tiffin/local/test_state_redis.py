"""Finding a state folder's Redis: the running embedded one, else one started briefly on the same data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiffin.contracts.exceptions import StateDirBusy
from tiffin.local.redis_server import SERVER_FILE, EmbeddedRedis, redis_data_dir, running_url, state_redis


def test_a_running_server_says_where_it_listens_and_forgets_it_on_stop(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        info = json.loads((tmp_path / "redis" / SERVER_FILE).read_text())
        assert info["port"] == server.port and server.process is not None and info["pid"] == server.process.pid
        assert running_url(tmp_path / "redis") == server.url
        assert ((tmp_path / "redis" / SERVER_FILE).stat().st_mode & 0o077) == 0  # owner-only
    finally:
        server.stop()
    assert not (tmp_path / "redis" / SERVER_FILE).exists()
    assert running_url(tmp_path / "redis") is None


def test_a_stale_record_is_ignored(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    (data / SERVER_FILE).write_text(json.dumps({"pid": 2**22 + 12345, "port": 1, "owner_pid": 1}))
    assert running_url(data) is None
    (data / SERVER_FILE).write_text("not json")
    assert running_url(data) is None


def test_two_servers_never_share_a_data_folder(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path / "redis")
    first.start()
    try:
        with pytest.raises(StateDirBusy, match="another process"):
            EmbeddedRedis(tmp_path / "redis").start(lock_wait_s=0)
    finally:
        first.stop()
    # Free again once the first one stopped.
    again = EmbeddedRedis(tmp_path / "redis")
    again.start(lock_wait_s=0)
    again.stop()


async def test_with_nothing_running_it_starts_redis_on_the_state_data_and_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    async with state_redis(tmp_path / "state") as state:
        assert state.where == "started"
        await state.client.set("written", "while stopped")
    assert running_url(redis_data_dir(tmp_path / "state")) is None  # stopped again
    assert (redis_data_dir(tmp_path / "state") / "appendonly.aof").exists() or any(
        redis_data_dir(tmp_path / "state").glob("appendonlydir/*")
    )

    # A later `tiffin up` (here: its embedded Redis) sees what was written, from the same append-only file.
    server = EmbeddedRedis(redis_data_dir(tmp_path / "state"))
    server.start()
    try:
        async with state_redis(tmp_path / "state") as state:
            assert (state.where, state.url) == ("running", server.url)
            assert await state.client.get("written") == b"while stopped"
    finally:
        server.stop()


async def test_redis_url_wins_as_it_does_for_tiffin_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server: EmbeddedRedis
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    async with state_redis(tmp_path / "state") as state:
        assert (state.where, state.url) == ("external", redis_server.url)
        assert await state.client.ping()
    assert not (tmp_path / "state").exists()
