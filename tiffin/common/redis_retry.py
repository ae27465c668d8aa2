"""How every tiffin Redis client treats a connection it finds dead: one immediate retry on a new one."""

from __future__ import annotations

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def reconnect_once() -> dict[str, object]:
    """Client settings: a command that finds its pooled connection closed is sent once more, at once, on a new one.

    After Redis restarts, every idle pooled connection is dead, and each would fail its next command. The one
    retry is immediate, so while Redis is still down it fails as fast as before (connection refused); it can
    repeat a command only if a connection broke after Redis ran it and before it answered.
    """
    return {"retry": Retry(NoBackoff(), 1), "retry_on_error": [RedisConnectionError]}
