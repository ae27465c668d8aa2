"""The admin listener beyond loopback: a token for everything but the health probes, or it does not start."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from interceptor.app import admin_app
from interceptor.config import InterceptorSettings
from interceptor.relay import Relay
from interceptor.replies import ReplyReader
from interceptor.routing import Router
from tests.interceptor.conftest import deployment, serving
from tiffin.cli.status import show_status
from tiffin.common.addresses import is_loopback, url_host

TOKEN = "s3cret-admin-token-0123456789"


@pytest.fixture
async def admin(redis: Redis) -> object:
    relay = Relay(redis, Router([deployment("one")]), ReplyReader(redis, "edge-test"), reply_gap_grace_s=5.0)
    async with serving(admin_app(relay, redis, TOKEN)) as url:
        yield url


@pytest.mark.parametrize("path", ["/api/status", "/api/status/one", "/metrics"])
async def test_every_admin_path_but_the_probes_needs_the_token(admin: str, path: str) -> None:
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": TOKEN}):
            async with session.get(admin + path, headers=headers) as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                error = (await resp.json())["error"]
                assert error["code"] == "invalid_api_key" and TOKEN not in error["message"]
        async with session.get(admin + path, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200


async def test_health_probes_need_no_token(admin: str) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/readyz"):
            async with session.get(admin + path) as resp:
                assert resp.status == 200


async def test_tiffin_status_sends_the_token_from_its_file(
    admin: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    assert await asyncio.to_thread(show_status, admin, False, token_file) == 0
    assert "one" in capsys.readouterr().out
    assert await asyncio.to_thread(show_status, admin, False, None) == 1
    assert "--token-file" in capsys.readouterr().err


def _settings_error(env: dict[str, str]) -> str:
    """Start the interceptor's settings in a child (they exit the process) and return what it said."""
    code = "from interceptor.config import InterceptorSettings; InterceptorSettings.from_env(); print('ok')"
    full = {**os.environ, "TIFFIN_CONFIG": "/nonexistent.yaml", "TIFFIN_PLAIN_HTTP": "1", **env}
    done = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def test_an_admin_listener_beyond_loopback_without_a_token_does_not_start() -> None:
    said = _settings_error({"TIFFIN_ADMIN_HOST": "0.0.0.0"})
    assert "TIFFIN_ADMIN_TOKEN_FILE" in said and "ok" not in said.split()


def test_a_short_or_missing_token_file_is_a_clear_error(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("abc\n")
    assert "at least 16 characters" in _settings_error({"TIFFIN_ADMIN_TOKEN_FILE": str(short)})
    assert "cannot read it" in _settings_error({"TIFFIN_ADMIN_TOKEN_FILE": str(tmp_path / "missing")})


def test_with_a_token_file_the_admin_listener_may_leave_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("TIFFIN_CONFIG", "/nonexistent.yaml")
    monkeypatch.setenv("TIFFIN_PLAIN_HTTP", "1")
    monkeypatch.setenv("TIFFIN_ADMIN_HOST", "0.0.0.0")
    monkeypatch.setenv("TIFFIN_ADMIN_TOKEN_FILE", str(token_file))
    assert InterceptorSettings.from_env().admin_token == TOKEN


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.internal", False)],
)  # fmt: skip
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_url_hosts() -> None:
    assert [url_host(h) for h in ("0.0.0.0", "::", "::1", "10.0.0.5")] == [
        "127.0.0.1",
        "127.0.0.1",
        "[::1]",
        "10.0.0.5",
    ]
