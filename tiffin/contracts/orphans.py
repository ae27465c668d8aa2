"""Withdrawing queued requests nobody waits for any more, so queue counts stay those of live demand.

An interceptor's reply stream expires unless its reader keeps refreshing it, so a missing reply stream means
the interceptor that accepted a request has died, and its client's connection with it. Such a request must
neither keep a deployment awake (or scaled up) nor spend a runner's time on an answer no one can read. A
request still queued long past its wait deadline is withdrawn too: its interceptor should have done so, and
did not (a Redis blip during its cancel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis

from tiffin.contracts import keys
from tiffin.contracts.frames import Envelope
from tiffin.contracts.queue import now_ms

Reason = Literal["interceptor_gone", "deadline_passed"]

# Past its wait deadline the interceptor answers 504 and withdraws the request itself; only a request still
# there well after that is left over.
DEADLINE_GRACE_MS = 30_000

_PAGE = 500

# KEYS: request state, queue. ARGV: entry id, '1' to cancel a taken/started request too ('0': queued only).
# A queued request (or one whose state lapsed) leaves the stream at once. A taken one is marked cancelled:
# its proxy sees that, aborts the upstream call and acknowledges the entry.
# Returns 1 (withdrawn from the queue), 2 (cancelled in flight) or 0 (left alone, e.g. already cancelled).
_WITHDRAW = """
local st = redis.call('HGET', KEYS[1], 'state')
if st == 'queued' or not st then
  redis.call('XDEL', KEYS[2], ARGV[1])
  if st then redis.call('HSET', KEYS[1], 'state', 'cancelled') end
  return 1
end
if (st == 'taken' or st == 'started') and ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled')
  return 2
end
return 0
"""


@dataclass(frozen=True)
class Withdrawal:
    """A request taken out of a deployment's queue, and why."""

    request_id: str
    reason: Reason
    in_flight: bool
    """It had reached a proxy: it is cancelled there rather than deleted here."""


async def withdraw_orphans(
    redis: Redis, deployment: str, *, own_reply: str | None = None, grace_ms: int = DEADLINE_GRACE_MS
) -> list[Withdrawal]:
    """Withdraw the requests of `deployment` whose interceptor is gone or whose wait deadline long passed.

    `own_reply` is the caller's own reply stream: alive by definition, even in the moment its reader is
    recreating it.
    """
    script = redis.register_script(_WITHDRAW)
    queue_key = keys.queue(deployment)
    now = now_ms()
    open_streams: dict[str, bool] = {} if own_reply is None else {own_reply: True}
    out: list[Withdrawal] = []
    start = "-"
    while True:
        page: Any = await redis.xrange(queue_key, min=start, max="+", count=_PAGE)
        for entry_id, fields in page:
            try:
                envelope = Envelope.from_fields(fields)
            except (KeyError, ValueError):
                continue  # not a request entry; proxies skip and acknowledge those themselves
            if envelope.reply_to not in open_streams:
                open_streams[envelope.reply_to] = bool(await redis.exists(envelope.reply_to))
            reason: Reason
            if not open_streams[envelope.reply_to]:
                reason, any_state = "interceptor_gone", "1"
            elif now > envelope.wait_deadline_ms + grace_ms:
                reason, any_state = "deadline_passed", "0"
            else:
                continue
            done = await script(keys=[keys.request(envelope.request_id), queue_key], args=[entry_id, any_state])
            if done:
                out.append(Withdrawal(envelope.request_id, reason, in_flight=done == 2))
        if len(page) < _PAGE:
            return out
        start = "(" + page[-1][0].decode()
