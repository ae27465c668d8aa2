"""One way to connect to Redis, shared by every component."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from tiffin.env import redis_url


def reconnect_once() -> dict[str, object]:
    """Client settings: a command that finds its pooled connection closed is sent once more, at once, on a new one.

    After Redis restarts, every idle pooled connection is dead, and each would fail its next command. The one
    retry is immediate, so while Redis is still down it fails as fast as before (connection refused); it can
    repeat a command only if a connection broke after Redis ran it and before it answered.
    """
    return {"retry": Retry(NoBackoff(), 1), "retry_on_error": [RedisConnectionError]}


def connect(url: str | None = None, *, max_connections: int = 64) -> Redis:
    """An asyncio Redis client (bytes in, bytes out) for `url` or `REDIS_URL`."""
    client: Redis = Redis.from_url(
        url or redis_url(),
        decode_responses=False,
        max_connections=max_connections,
        health_check_interval=30,
        **reconnect_once(),  # type: ignore[arg-type]
    )
    return client
