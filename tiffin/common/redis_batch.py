"""A Redis client that sends the commands its tasks issue in the same event-loop turn as one pipeline.

Under load the interceptor's requests move in step: one reply-stream read wakes several handlers, and the
clients they answer send their next requests together, so several handlers each run their key-limit script,
their enqueue script or their cleanup in the same loop turn. Sent one by one, each costs a pooled connection,
a socket write and a read; together they share all three. Each command keeps its own result or error (a
pipeline without a transaction: nothing becomes atomic that was not, and one command's error is its caller's
alone); a connection failure fails every command of the batch, as it would have failed each.

The first command of a turn waits for the end of that turn (one pass of the loop) for others to join; alone,
it goes out as before. Blocking commands (XREAD BLOCK and the like) must not use this client: one would hold
up the batch it joined.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

_Command = tuple[tuple[Any, ...], dict[str, Any], "asyncio.Future[Any]"]


class BatchingRedis(Redis):
    """redis-py's asyncio client, with the commands of one loop turn sent together (pipelines unchanged)."""

    _joining: list[_Command] | None = None
    """Commands of other tasks waiting to go out with the current turn's first one."""
    _sending: set[asyncio.Task[None]] | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Run one command: alone at once if no other task sends one this turn, else in their pipeline."""
        loop = asyncio.get_running_loop()
        joining = self._joining
        if joining is not None:  # another task's command opened this turn's batch: join it
            future: asyncio.Future[Any] = loop.create_future()
            joining.append((args, options, future))
            return await future
        joining = self._joining = []
        try:
            await asyncio.sleep(0)  # the rest of this turn: commands issued meanwhile join the batch
        except BaseException:
            self._joining = None
            if joining:
                self._send_soon(joining)  # cancelled while gathering: the others still get theirs
            raise
        self._joining = None
        if not joining:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        own: asyncio.Future[Any] = loop.create_future()
        # Sent by a task of its own: the others' answers must not depend on this caller staying.
        self._send_soon([(args, options, own), *joining])
        return await own

    def _send_soon(self, commands: list[_Command]) -> None:
        task = asyncio.create_task(self._send(commands))
        if self._sending is None:
            self._sending = set()
        self._sending.add(task)  # held until done: a task nobody references may be collected mid-flight
        task.add_done_callback(self._sending.discard)

    async def _send(self, commands: list[_Command]) -> None:
        """One pipeline for `commands`; each future gets its command's result or error."""
        try:
            async with self.pipeline(transaction=False) as pipe:
                for args, options, _ in commands:
                    pipe.execute_command(*args, **options)
                results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection failed: every caller hears it, as each would have alone
            for _, _, future in commands:
                if not future.done():
                    future.set_exception(exc)
            return
        except asyncio.CancelledError:  # the loop is closing down
            for _, _, future in commands:
                future.cancel()
            raise
        for (_, _, future), result in zip(commands, results, strict=True):
            if future.done():  # its caller gave up (timeout, cancellation)
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
