"""The dashboard page's files on the admin listener: served without the token (they hold no data), locked down."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from redis.asyncio import Redis

from interceptor.app import admin_app
from interceptor.page import FILES, STATIC
from interceptor.relay import Relay
from interceptor.replies import ReplyReader
from interceptor.routing import Router
from tests.interceptor.conftest import deployment, serving

TOKEN = "page-admin-token-0123456789"


@pytest.fixture
async def admin(redis: Redis) -> AsyncIterator[str]:
    relay = Relay(redis, Router([deployment("one")]), ReplyReader(redis, "edge-test"), reply_gap_grace_s=5.0)
    async with serving(admin_app(relay, redis, TOKEN)) as url:
        yield url


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/dashboard", "text/html"), ("/dashboard/dashboard.css", "text/css"),
     ("/dashboard/dashboard-charts.js", "text/javascript"), ("/dashboard/dashboard.js", "text/javascript")],
)  # fmt: skip
async def test_the_page_and_its_assets_load_without_the_token(admin: str, path: str, content_type: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(admin + path) as resp:
        assert resp.status == 200
        assert resp.content_type == content_type
        assert resp.charset == "utf-8"
        body = await resp.read()
    assert body == (STATIC / FILES[path][0]).read_bytes()
    # Only its own files run, and fetches stay on this listener: nothing from elsewhere can read the token.
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_the_data_behind_the_page_still_needs_the_token(admin: str) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/api/dashboard", "/api/dashboard/one"):
            async with session.get(admin + path) as resp:
                assert resp.status == 401
            async with session.get(admin + path, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 200
        # Paths beside the page's files are not opened by it.
        async with session.get(admin + "/dashboard/secret.json") as resp:
            assert resp.status == 401


async def test_a_trailing_slash_leads_to_the_page(admin: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(admin + "/dashboard/", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/dashboard"


def test_the_page_loads_nothing_from_elsewhere() -> None:
    # No CDN, no external fonts: the shipped files name no other host (the SVG namespace is a name, not a load).
    for name in ("dashboard.html", "dashboard.css", "dashboard-charts.js", "dashboard.js"):
        text = (STATIC / name).read_text().replace('"http://www.w3.org/2000/svg"', "")
        assert re.findall(r"(?:https?:)?//[\w-]+(?:\.[\w-]+)+", text) == [], name
        assert "@import" not in text and "url(" not in text, name
