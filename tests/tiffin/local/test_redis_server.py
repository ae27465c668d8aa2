"""The embedded Redis: a password nobody else sees, files only its owner reads, the same password on restart."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis as sync_redis

from tiffin.local.redis_server import EmbeddedRedis, password_of, running_url


@pytest.fixture
def server(tmp_path: Path) -> EmbeddedRedis:
    # A path with a space: the config file must quote it.
    embedded = EmbeddedRedis(tmp_path / "state dir" / "redis")
    embedded.start()
    yield embedded
    embedded.stop()


def test_clients_without_the_password_are_refused(server: EmbeddedRedis) -> None:
    with pytest.raises(sync_redis.AuthenticationError):
        sync_redis.Redis(port=server.port, protocol=2).ping()
    with pytest.raises(sync_redis.AuthenticationError):
        sync_redis.Redis(port=server.port, password="wrong", protocol=2).ping()
    client = sync_redis.Redis.from_url(server.url)
    assert client.ping()
    client.close()


def test_the_password_is_not_in_the_process_list(server: EmbeddedRedis) -> None:
    assert server.process is not None
    cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
    assert server.password.encode() not in cmdline
    assert server.password not in server.shown_url


def test_the_data_folder_and_everything_in_it_is_owner_only(server: EmbeddedRedis) -> None:
    client = sync_redis.Redis.from_url(server.url)
    client.set("prompt", "something private")
    client.close()
    folder = server.data_dir
    assert folder.stat().st_mode & 0o777 == 0o700
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != "server.lock"]
    assert {"password", "redis.conf", "redis.log", "server.json"} <= {p.name for p in files}
    assert any("appendonly" in p.name for p in files)
    for path in files:
        assert path.stat().st_mode & 0o077 == 0, f"{path.name}: {oct(path.stat().st_mode)}"


def test_a_restart_keeps_the_password_and_the_data(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path / "redis")
    first.start()
    client = sync_redis.Redis.from_url(first.url)
    client.set("kept", "yes")
    client.close()
    first.stop()
    second = EmbeddedRedis(tmp_path / "redis")
    second.start()
    try:
        assert second.password == first.password == password_of(tmp_path / "redis")
        assert running_url(tmp_path / "redis") == second.url
        client = sync_redis.Redis.from_url(second.url)
        assert client.get("kept") == b"yes"
        client.close()
    finally:
        second.stop()
    assert running_url(tmp_path / "redis") is None


def test_a_server_left_by_an_owner_that_died_is_stopped_and_replaced(tmp_path: Path) -> None:
    left = EmbeddedRedis(tmp_path / "redis")
    left.start()
    client = sync_redis.Redis.from_url(left.url)
    client.set("kept", "yes")
    client.close()
    left._drop_lock()  # as when its owner dies: the lock goes with it, the server (an older tiffin's) stays
    assert left.process is not None and left.process.poll() is None
    successor = EmbeddedRedis(tmp_path / "redis")
    successor.start()
    try:
        assert left.process.wait(10) is not None  # stopped by the successor (SIGTERM: it flushed its data)
        client = sync_redis.Redis.from_url(successor.url)
        assert client.get("kept") == b"yes"
        client.close()
    finally:
        successor.stop()
        left.stop()
