"""Withdrawing requests whose interceptor died, or whose wait ran out long ago, on a real Redis."""

from __future__ import annotations

from redis.asyncio import Redis

from tiffin.contracts import keys
from tiffin.contracts.frames import Envelope
from tiffin.contracts.orphans import withdraw_orphans
from tiffin.contracts.queue import DeploymentQueue, now_ms

DEP = "orphans"
LIVE = keys.reply("edge-live")
DEAD = keys.reply("edge-dead")  # never created: the stream of an interceptor that died and expired


def envelope(request_id: str, reply_to: str, deadline_in_ms: int = 600_000) -> Envelope:
    now = now_ms()
    return Envelope(request_id=request_id, reply_to=reply_to, path="/v1/chat/completions", body=b"{}",
                    headers={}, enqueued_ms=now, wait_deadline_ms=now + deadline_in_ms,
                    upstream_timeout_s=30)  # fmt: skip


async def enqueue(queue: DeploymentQueue, env: Envelope) -> bytes:
    return await queue.enqueue(env, max_waiting=10_000, ttl_s=600)


async def test_only_requests_of_dead_interceptors_are_withdrawn(redis: Redis) -> None:
    await redis.xadd(LIVE, {"kind": "open"})
    queue = DeploymentQueue(redis, DEP)
    await queue.ensure_group()
    await enqueue(queue, envelope("live-1", LIVE))
    await enqueue(queue, envelope("dead-1", DEAD))
    await enqueue(queue, envelope("live-2", LIVE))
    await enqueue(queue, envelope("dead-2", DEAD))
    assert await queue.depth() == (4, 0)

    withdrawn = await withdraw_orphans(redis, DEP)

    assert [(w.request_id, w.reason, w.in_flight) for w in withdrawn] == [
        ("dead-1", "interceptor_gone", False),
        ("dead-2", "interceptor_gone", False),
    ]
    assert await queue.depth() == (2, 0)
    assert await queue.state("dead-1") == "cancelled"
    taken = [d.envelope.request_id for d in await queue.read("proxy-1", count=10, block_ms=10)]
    assert taken == ["live-1", "live-2"]
    assert await withdraw_orphans(redis, DEP) == []  # nothing left to do: a second pass changes nothing


async def test_an_in_flight_request_of_a_dead_interceptor_is_cancelled_for_its_proxy(redis: Redis) -> None:
    queue = DeploymentQueue(redis, DEP)
    await queue.ensure_group()
    entry = await enqueue(queue, envelope("dead-busy", DEAD))
    [delivery] = await queue.read("proxy-1", count=1, block_ms=10)
    assert await queue.take("dead-busy", "proxy-1") == "taken"

    [w] = await withdraw_orphans(redis, DEP)

    assert (w.request_id, w.in_flight) == ("dead-busy", True)
    # The entry stays with its proxy, which sees the state, aborts the upstream call and acknowledges it.
    assert await queue.state("dead-busy") == "cancelled"
    assert await queue.depth() == (0, 1)
    assert delivery.entry_id == entry
    assert await withdraw_orphans(redis, DEP) == []  # counted once, not on every pass until its proxy lets go


async def test_the_callers_own_reply_stream_counts_as_alive_even_while_it_is_being_recreated(redis: Redis) -> None:
    queue = DeploymentQueue(redis, DEP)
    await enqueue(queue, envelope("mine", keys.reply("edge-self")))
    assert await withdraw_orphans(redis, DEP, own_reply=keys.reply("edge-self")) == []
    assert await queue.depth() == (1, 0)


async def test_a_request_left_queued_past_its_deadline_is_withdrawn_but_a_taken_one_is_not(redis: Redis) -> None:
    await redis.xadd(LIVE, {"kind": "open"})
    queue = DeploymentQueue(redis, DEP)
    await queue.ensure_group()
    await enqueue(queue, envelope("late-busy", LIVE, deadline_in_ms=-60_000))
    await queue.read("proxy-1", count=1, block_ms=10)
    await queue.take("late-busy", "proxy-1")
    await enqueue(queue, envelope("late-queued", LIVE, deadline_in_ms=-60_000))
    await enqueue(queue, envelope("just-late", LIVE, deadline_in_ms=-1_000))  # its interceptor is on it

    withdrawn = await withdraw_orphans(redis, DEP)

    assert [(w.request_id, w.reason) for w in withdrawn] == [("late-queued", "deadline_passed")]
    assert await queue.state("late-busy") == "taken"
    assert await queue.depth() == (1, 1)


async def test_a_queued_request_whose_state_expired_leaves_the_queue(redis: Redis) -> None:
    queue = DeploymentQueue(redis, DEP)
    await enqueue(queue, envelope("lapsed", DEAD))
    await redis.delete(keys.request("lapsed"))  # what the state's TTL does after a crashed edge

    [w] = await withdraw_orphans(redis, DEP)

    assert w.request_id == "lapsed" and not w.in_flight
    assert await redis.xlen(queue.key) == 0
    assert await queue.state("lapsed") is None  # withdrawing leaves no new state behind


async def test_withdrawing_pages_through_a_long_queue(redis: Redis) -> None:
    queue = DeploymentQueue(redis, DEP)
    for i in range(1203):
        await enqueue(queue, envelope(f"dead-{i}", DEAD))
    assert len(await withdraw_orphans(redis, DEP)) == 1203
    assert await redis.xlen(queue.key) == 0
