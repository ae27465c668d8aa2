"""redis-py's connection pools with a fast path for the usual case: an idle connection is there, nobody waits.

redis-py takes a pooled connection for every command and gives it back after: the blocking pool through an
asyncio.Condition, a timer for its wait bound and a lock, both pools through a handful of awaited
observability hooks (no-ops unless OpenTelemetry is set up). Per request at the edge that was about a tenth of
the interceptor's CPU (py-spy, c=32). When an idle connection is at hand and no task is queued for one, taking
it cannot wait, so none of that is needed; every other case (pool empty or at its bound, tasks waiting, a
maintenance move in progress) goes through redis-py's own code unchanged, with its bounded wait.

What a connection is checked for before use (`ensure_connection`: connected, no stale data waiting) is kept.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, ConnectionPool
from redis.asyncio.connection import AbstractConnection

try:
    from redis.event import AsyncAfterConnectionReleasedEvent
except ImportError:  # redis-py before 5.3 has no event dispatcher: nothing listens
    AsyncAfterConnectionReleasedEvent = None  # type: ignore[assignment,misc]


def _internals_known() -> bool:
    """Whether this redis-py keeps its pool the way the fast path expects (checked once, at import)."""
    pool = ConnectionPool()
    return (isinstance(getattr(pool, "_available_connections", None), list)
            and isinstance(getattr(pool, "_in_use_connections", None), set)
            and callable(getattr(pool, "ensure_connection", None)))  # fmt: skip


FAST_PATH = _internals_known()
"""False on a redis-py whose pool internals differ: every call then takes redis-py's own path, slower but right."""


class _FastPath:
    """Take and give back an idle connection without locks or hooks when nothing else is going on."""

    # Set by redis-py's ConnectionPool (declared for the type checker; both classes below have them).
    _available_connections: list[AbstractConnection]
    _in_use_connections: set[AbstractConnection]

    def _quiet(self) -> bool:
        """No task waits for a connection and no maintenance move is rewriting the pool."""
        if not FAST_PATH:
            return False
        lock = getattr(self, "_lock", None)
        if getattr(self, "_in_maintenance", False) or (lock is not None and lock.locked()):
            return False
        condition = getattr(self, "_condition", None)
        # A task inside the condition (waiting for a connection, or about to) gets the slow, fair path.
        return condition is None or not (condition.locked() or getattr(condition, "_waiters", None))

    async def get_connection(self, *args: Any, **options: Any) -> AbstractConnection:
        """An idle connection at once when there is one and nobody waits; otherwise redis-py's own path."""
        if args or options or not self._quiet() or not self._available_connections:
            connection: AbstractConnection = await super().get_connection(*args, **options)  # type: ignore[misc]
            return connection
        connection = self._available_connections.pop()
        self._in_use_connections.add(connection)
        try:
            await self.ensure_connection(connection)  # type: ignore[attr-defined]
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        """Give a connection back; with tasks waiting, through redis-py's path (it wakes one of them)."""
        if not self._quiet():
            await super().release(connection)  # type: ignore[misc]
            return
        self._in_use_connections.remove(connection)
        if connection.should_reconnect():  # type: ignore[no-untyped-call]
            await connection.disconnect()
        self._available_connections.append(connection)
        dispatcher = getattr(self, "_event_dispatcher", None)
        if dispatcher is not None and AsyncAfterConnectionReleasedEvent is not None:
            # Re-authentication and the like listen to this: keep it.
            await dispatcher.dispatch_async(AsyncAfterConnectionReleasedEvent(connection))  # type: ignore[no-untyped-call]


class FastConnectionPool(_FastPath, ConnectionPool):
    """redis-py's ConnectionPool (fails past `max_connections`), with the fast path."""


class FastBlockingConnectionPool(_FastPath, BlockingConnectionPool):
    """redis-py's BlockingConnectionPool (waits up to `timeout` past `max_connections`), with the fast path."""
