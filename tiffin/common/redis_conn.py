"""One way to connect to Redis, shared by every component."""

from __future__ import annotations

from redis.asyncio import Redis

from tiffin.common.env import redis_url
from tiffin.common.redis_batch import BatchingRedis
from tiffin.common.redis_pool import FastBlockingConnectionPool, FastConnectionPool
from tiffin.common.redis_retry import reconnect_once


def connect(url: str | None = None, *, max_connections: int = 64, batched: bool = False) -> Redis:
    """An asyncio Redis client (bytes in, bytes out) for `url` or `REDIS_URL`.

    `batched`: as for `connect_bounded` (no blocking commands on such a client)."""
    pool = FastConnectionPool.from_url(
        url or redis_url(), decode_responses=False, max_connections=max_connections, health_check_interval=30,
        **reconnect_once(),
    )  # fmt: skip
    return (BatchingRedis if batched else Redis).from_pool(pool)


def connect_bounded(url: str, *, max_connections: int, timeout_s: float, batched: bool = False) -> Redis:
    """A client whose every wait is bounded: for a pooled connection (a burst queues for one instead of
    failing), for a connection to Redis, and for each reply, each at most `timeout_s`.

    `batched`: the commands of one event-loop turn go out as one pipeline (`BatchingRedis`; no blocking
    commands on such a client)."""
    pool = FastBlockingConnectionPool.from_url(
        url,
        decode_responses=False,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_connect_timeout=min(timeout_s, 2.0),
        socket_timeout=timeout_s,
        health_check_interval=30,
        **reconnect_once(),  # after a Redis restart its idle connections are dead: replace, not fail
    )
    return (BatchingRedis if batched else Redis).from_pool(pool)
