"""Readiness probing against a real HTTP server on a real socket."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from tests.interceptor.conftest import serving
from tiffin.common.probe import answers_ok, wait_until_ok
from tiffin.local.ports import free_port


def health_app(ready: asyncio.Event, asked: asyncio.Event) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        asked.set()
        return web.json_response({}, status=200 if ready.is_set() else 503)

    app = web.Application()
    app.router.add_get("/health", health)
    return app


async def test_only_a_200_counts_as_ok() -> None:
    ready, asked = asyncio.Event(), asyncio.Event()
    async with serving(health_app(ready, asked)) as url, aiohttp.ClientSession() as session:
        assert not await answers_ok(session, url + "/health")
        ready.set()
        assert await answers_ok(session, url + "/health")
        assert not await answers_ok(session, url + "/missing")
        assert not await answers_ok(session, f"http://127.0.0.1:{free_port()}/health")  # refused


async def test_waiting_ends_when_the_server_turns_ready() -> None:
    ready, asked = asyncio.Event(), asyncio.Event()
    async with serving(health_app(ready, asked)) as url, aiohttp.ClientSession() as session:
        waiting = asyncio.create_task(wait_until_ok(session, url + "/health", asyncio.Event(), poll_s=0.01))
        await asked.wait()  # it has seen the server not ready
        assert not waiting.done()
        ready.set()
        assert await asyncio.wait_for(waiting, 10)


async def test_waiting_gives_up_when_told_to_stop_or_out_of_time() -> None:
    stop = asyncio.Event()
    refused = f"http://127.0.0.1:{free_port()}/health"
    async with aiohttp.ClientSession() as session:
        assert not await wait_until_ok(session, refused, stop, timeout_s=0.05, poll_s=0.01)
        waiting = asyncio.create_task(wait_until_ok(session, refused, stop))  # no timeout: only stop ends it
        stop.set()
        assert not await asyncio.wait_for(waiting, 10)
