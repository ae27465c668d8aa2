"""An in-process interceptor on real sockets and a real Redis, and a stand-in proxy speaking the queue contract."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from interceptor.app import admin_app, public_app
from interceptor.auth import KeyGate
from interceptor.config import EdgeSettings
from interceptor.relay import Relay
from interceptor.replies import ReplyReader
from interceptor.routing import Router
from interceptor.server import start_public
from tiffin.contracts.config import Deployment
from tiffin.contracts.frames import Frame
from tiffin.contracts.queue import Delivery, DeploymentQueue
from tiffin.local.ports import free_port

TIMEOUT_S = 10.0


def deployment(name: str, auth: dict[str, Any] | None = None, **limits: Any) -> Deployment:
    """A deployment with `limits`; open (no API key needed) unless `auth` says otherwise (see test_auth)."""
    return Deployment.model_validate(
        {"name": name, "model": "smollm2", "limits": limits, "auth": auth or {"require_api_key": False}}
    )


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serving_public(app: web.Application, settings: EdgeSettings) -> AsyncIterator[str]:
    """Serve `app` as the public edge (interceptor.server) on a free loopback port; yields its base URL."""
    runner = await start_public(app, "127.0.0.1", 0, None, settings)
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@dataclass
class Edge:
    """A running interceptor: its public and admin base URLs and the relay behind them."""

    url: str
    admin: str
    relay: Relay


@asynccontextmanager
async def running_edge(
    redis: Redis,
    deployments: list[Deployment],
    interceptor_id: str = "edge-test",
    poll_s: float = 0.25,
    slot_lease_s: float = 30.0,
    edge: EdgeSettings | None = None,
) -> AsyncIterator[Edge]:
    """An interceptor as `python -m interceptor` wires it: the public edge with its limits (`edge`), keys loaded
    and polled, slots renewed, and the admin listener; in process on real sockets."""
    reader = ReplyReader(redis, interceptor_id)
    gate = KeyGate(redis, poll_s=poll_s, slot_lease_s=slot_lease_s)
    await gate.load()
    settings = edge or EdgeSettings()
    relay = Relay(redis, Router(deployments), reader, reply_gap_grace_s=5.0, gate=gate, edge=settings)
    await relay.ensure_queues()
    await reader.start()
    stop = asyncio.Event()
    keys_task = asyncio.create_task(gate.run(stop))
    try:
        async with serving_public(public_app(relay), settings) as url, serving(admin_app(relay, redis)) as admin:
            yield Edge(url, admin, relay)
    finally:
        stop.set()
        await keys_task
        await reader.stop()


class StandInProxy:
    """Takes and answers requests through `tiffin.contracts.queue` as a proxy sidecar does, under the test's control."""

    def __init__(self, redis: Redis, deployment: str, name: str = "proxy-test") -> None:
        self.queue = DeploymentQueue(redis, deployment)
        self.name = name

    async def take_one(self) -> Delivery:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                for delivery in await self.queue.read(self.name, count=1, block_ms=100):
                    assert await self.queue.take(delivery.envelope.request_id, self.name) == "taken"
                    return delivery

    async def answer(self, delivery: Delivery, status: int = 200, body: bytes = b'{"ok": true}') -> None:
        envelope = delivery.envelope
        rid = envelope.request_id
        await self.queue.start(envelope, Frame.head(rid, self.name, status, {"content-type": "application/json"}))
        await self.queue.send(envelope.reply_to, Frame.chunk(rid, self.name, body))
        await self.queue.send(envelope.reply_to, Frame.end(rid, self.name))
        await self.queue.finish(delivery.entry_id)

    async def fail(self, delivery: Delivery, status: int, code: str) -> None:
        envelope = delivery.envelope
        frame = Frame.fail(envelope.request_id, self.name, status, "the stand-in proxy failed it", code)
        await self.queue.send(envelope.reply_to, frame)
        await self.queue.finish(delivery.entry_id)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = TIMEOUT_S) -> None:
    """Poll an observable condition until it holds (bounded)."""
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.01)
