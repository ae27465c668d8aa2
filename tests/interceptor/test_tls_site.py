"""The public HTTPS site: requests are served over verified TLS, and a client that never says hello is cut."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from aiohttp import web

from interceptor.tls_site import TLSSite
from tests.tiffin.certs import Authority, write_pair
from tiffin.redis_server import free_port
from tiffin.tls import CertificateStore

DEADLINE_S = 30.0  # far below asyncio's own 60 s handshake default, far above the 0.5 s configured here


async def test_requests_are_served_and_a_silent_connection_is_closed_before_its_handshake(tmp_path: Path) -> None:
    ca = Authority.make()
    store = CertificateStore.load([write_pair(tmp_path, "site", *ca.issue(["localhost"]))])

    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = TLSSite(runner, "127.0.0.1", port, ssl_context=store.context, handshake_timeout_s=0.5)
    await site.start()
    try:
        connector = aiohttp.TCPConnector(ssl=ca.trust())
        async with aiohttp.ClientSession(connector=connector) as session, session.get(
            f"https://localhost:{port}/"
        ) as resp:  # fmt: skip
            assert (resp.status, await resp.text()) == (200, "ok")

        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # TCP only: no ClientHello, ever
        try:
            assert await asyncio.wait_for(reader.read(), DEADLINE_S) == b""  # the server hung up
        finally:
            writer.close()
    finally:
        await runner.cleanup()
