"""One way to connect to Redis, shared by every component."""

from __future__ import annotations

from redis.asyncio import Redis

from tiffin.env import redis_url
from tiffin.redis_retry import reconnect_once


def connect(url: str | None = None, *, max_connections: int = 64) -> Redis:
    """An asyncio Redis client (bytes in, bytes out) for `url` or `REDIS_URL`."""
    client: Redis = Redis.from_url(
        url or redis_url(), decode_responses=False, max_connections=max_connections, health_check_interval=30,
        **reconnect_once(),  # type: ignore[arg-type]  # redis-py's keyword arguments are untyped here
    )  # fmt: skip
    return client
