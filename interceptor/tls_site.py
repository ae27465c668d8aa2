"""The public HTTPS listener: aiohttp's TCP site with a deadline on the TLS handshake."""

from __future__ import annotations

import asyncio
import ssl

from aiohttp import web


class TLSSite(web.BaseSite):
    """Like `web.TCPSite`, but a connection must finish its TLS handshake within `handshake_timeout_s`.

    aiohttp sees a connection only once its handshake is done; until then asyncio's default (60 s) is all that
    bounds a client that connects and never says hello, holding a file descriptor all that time.
    """

    __slots__ = ("_handshake_timeout_s", "_host", "_port")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, ssl_context: ssl.SSLContext, handshake_timeout_s: float
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port = host, port
        self._handshake_timeout_s = handshake_timeout_s

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            ssl_handshake_timeout=self._handshake_timeout_s,
        )  # fmt: skip
