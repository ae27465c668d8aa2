"""Settling a request whose upstream call the proxy stopped (its client went away, or the proxy is stopping past
its drain timeout): by the state the request is in, so that its client gets exactly one answer."""

from __future__ import annotations

from typing import Literal

from tiffin.contracts.frames import Frame
from tiffin.contracts.queue import Delivery, DeploymentQueue

Settled = Literal["settled", "released", "failed_mid_reply", "acknowledged"]


async def settle(queue: DeploymentQueue, delivery: Delivery, consumer: str) -> Settled:
    """Settle a request `consumer` holds but no longer serves (its upstream call stopped and awaited).

    Not started: handed back to the queue at once (`release`, fenced by owner), for another replica; a runner's
    saved answer stays for it. Started: reply bytes may have reached the client, so its reply ends with a
    `replica_failed` error frame, then the entry is acknowledged. Anything else (cancelled, expired):
    acknowledged. No longer pending for `consumer` (its last write acknowledged it, or another replica
    reclaimed it): left alone, as its answer is given or is another's to give.
    """
    rid = delivery.envelope.request_id
    if not await queue.holds(consumer, delivery.entry_id):
        return "settled"
    state = await queue.state(rid)
    if state == "taken" and await queue.release(delivery, consumer) is not None:
        return "released"
    # Not released: cancelled meanwhile (a start is this consumer's alone, and it has stopped), or in another state.
    if state == "started":
        owner = await queue.owner(rid) or consumer  # the interceptor follows the frames of its head's signer
        frame = Frame.fail(rid, owner, 502, "the replica serving this request stopped mid-reply", "replica_failed")
        await queue.send(delivery.envelope.reply_to, frame)
        await queue.finish(delivery.entry_id, rid)
        return "failed_mid_reply"
    await queue.finish(delivery.entry_id, rid)
    return "acknowledged"
