"""The deployment queue on a real Redis: bounds, state transitions, reply frames and reclaiming."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from tiffin.common.redis_conn import connect
from tiffin.contracts import keys
from tiffin.contracts.exceptions import QueueFull
from tiffin.contracts.frames import Envelope, Frame
from tiffin.contracts.queue import DeploymentQueue, SavedResult, save_result
from tiffin.local.redis_server import EmbeddedRedis

REPLY = keys.reply("interceptor-test")
TTL_S = 120


def envelope(request_id: str, body: bytes = b'{"model": "m"}') -> Envelope:
    return Envelope(
        request_id=request_id,
        reply_to=REPLY,
        path="/v1/chat/completions",
        body=body,
        headers={"content-type": "application/json"},
        enqueued_ms=1,
        wait_deadline_ms=2,
        upstream_timeout_s=3.5,
    )


def alive_except(*dead: str) -> Callable[[str], Awaitable[bool]]:
    async def is_alive(owner: str) -> bool:
        return owner not in dead

    return is_alive


async def pending_owners(redis: Redis, queue: DeploymentQueue) -> dict[bytes, str]:
    pending: Any = await redis.xpending_range(queue.key, keys.GROUP, min="-", max="+", count=1000)
    return {item["message_id"]: item["consumer"].decode() for item in pending}


async def open_reply_stream(redis: Redis) -> None:
    await redis.xadd(REPLY, {"kind": "open"})


@pytest.fixture
def queue(redis: Redis) -> DeploymentQueue:
    return DeploymentQueue(redis, "llama")


# --- enqueue and the bound ---------------------------------------------------------------------------------


async def test_enqueue_returns_the_entry_id_and_marks_the_request_queued(redis: Redis, queue: DeploymentQueue) -> None:
    env = envelope("r1", body=b"\x00\xff body")

    entry_id = await queue.enqueue(env, max_waiting=10, ttl_s=TTL_S)

    entries: Any = await redis.xrange(queue.key)
    assert [eid for eid, _ in entries] == [entry_id]
    assert Envelope.from_fields(entries[0][1]) == env
    assert await queue.state("r1") == "queued"
    assert 0 < await redis.ttl(keys.request("r1")) <= TTL_S


async def test_third_enqueue_is_refused_when_two_requests_wait(redis: Redis, queue: DeploymentQueue) -> None:
    await queue.ensure_group()
    await queue.enqueue(envelope("r1"), max_waiting=2, ttl_s=TTL_S)
    await queue.enqueue(envelope("r2"), max_waiting=2, ttl_s=TTL_S)

    with pytest.raises(QueueFull) as caught:
        await queue.enqueue(envelope("r3"), max_waiting=2, ttl_s=TTL_S)

    assert caught.value.status == 429
    assert "llama" in caught.value.message
    assert await redis.xlen(queue.key) == 2
    assert await queue.state("r3") is None  # a refused request leaves no state behind


async def test_bound_is_enforced_before_any_consumer_group_exists(redis: Redis, queue: DeploymentQueue) -> None:
    await queue.enqueue(envelope("r1"), max_waiting=2, ttl_s=TTL_S)
    await queue.enqueue(envelope("r2"), max_waiting=2, ttl_s=TTL_S)

    with pytest.raises(QueueFull):
        await queue.enqueue(envelope("r3"), max_waiting=2, ttl_s=TTL_S)
    assert await redis.xlen(queue.key) == 2


async def test_entry_read_by_a_consumer_no_longer_counts_against_the_bound(
    redis: Redis, queue: DeploymentQueue
) -> None:
    await queue.ensure_group()
    await queue.enqueue(envelope("r1"), max_waiting=2, ttl_s=TTL_S)
    await queue.enqueue(envelope("r2"), max_waiting=2, ttl_s=TTL_S)
    with pytest.raises(QueueFull):
        await queue.enqueue(envelope("r3"), max_waiting=2, ttl_s=TTL_S)

    [delivery] = await queue.read("proxy-1", count=1, block_ms=100)
    assert delivery.envelope.request_id == "r1"
    await queue.enqueue(envelope("r4"), max_waiting=2, ttl_s=TTL_S)

    with pytest.raises(QueueFull):
        await queue.enqueue(envelope("r5"), max_waiting=2, ttl_s=TTL_S)
    assert await queue.depth() == (2, 1)


# --- take and cancel ---------------------------------------------------------------------------------------


async def test_take_moves_a_queued_request_to_taken_by_its_consumer(redis: Redis, queue: DeploymentQueue) -> None:
    await queue.enqueue(envelope("r1"), max_waiting=10, ttl_s=TTL_S)

    assert await queue.take("r1", "proxy-1") == "taken"

    state = await redis.hgetall(keys.request("r1"))
    assert state[b"state"] == b"taken"
    assert state[b"owner"] == b"proxy-1"
    assert int(state[b"taken_ms"]) > 0


async def test_take_of_a_redelivered_request_hands_it_to_the_new_consumer(redis: Redis, queue: DeploymentQueue) -> None:
    await queue.enqueue(envelope("r1"), max_waiting=10, ttl_s=TTL_S)
    await queue.take("r1", "proxy-1")

    assert await queue.take("r1", "proxy-2") == "taken"
    assert await redis.hget(keys.request("r1"), "owner") == b"proxy-2"


async def test_take_after_cancel_reports_cancelled(queue: DeploymentQueue) -> None:
    entry_id = await queue.enqueue(envelope("r1"), max_waiting=10, ttl_s=TTL_S)
    assert await queue.cancel("r1", entry_id, even_if_taken=False) == "cancelled"

    assert await queue.take("r1", "proxy-1") == "cancelled"
    assert await queue.state("r1") == "cancelled"


async def test_take_of_a_request_whose_state_expired_reports_nothing(queue: DeploymentQueue) -> None:
    assert await queue.take("never-enqueued", "proxy-1") is None
    assert await queue.state("never-enqueued") is None


async def test_take_of_a_started_request_does_not_take_it_again(queue: DeploymentQueue, redis: Redis) -> None:
    await open_reply_stream(redis)
    env = envelope("r1")
    await queue.enqueue(env, max_waiting=10, ttl_s=TTL_S)
    await queue.take("r1", "proxy-1")
    await queue.start(env, Frame.head("r1", "proxy-1", 200, {}))

    assert await queue.take("r1", "proxy-2") == "started"
    assert await redis.hget(keys.request("r1"), "owner") == b"proxy-1"


async def test_cancel_of_a_queued_request_deletes_its_stream_entry(redis: Redis, queue: DeploymentQueue) -> None:
    await queue.ensure_group()
    keep = await queue.enqueue(envelope("r0"), max_waiting=10, ttl_s=TTL_S)
    entry_id = await queue.enqueue(envelope("r1"), max_waiting=10, ttl_s=TTL_S)

    assert await queue.cancel("r1", entry_id, even_if_taken=False) == "cancelled"

    entries: Any = await redis.xrange(queue.key)
    assert [eid for eid, _ in entries] == [keep]
    assert await queue.state("r1") == "cancelled"
    deliveries = await queue.read("proxy-1", count=10, block_ms=100)
    assert [d.envelope.request_id for d in deliveries] == ["r0"]


async def test_cancel_without_even_if_taken_leaves_a_taken_request_taken(queue: DeploymentQueue, redis: Redis) -> None:
    entry_id = await queue.enqueue(envelope("r1"), max_waiting=10, ttl_s=TTL_S)
    await queue.take("r1", "proxy-1")

    assert await queue.cancel("r1", entry_id, even_if_taken=False) == "taken"

    assert await queue.state("r1") == "taken"
    assert await redis.xlen(queue.key) == 1  # the proxy still holds it


async def test_cancel_even_if_taken_cancels_a_taken_request(queue: DeploymentQueue) -> None:
    entry_id = await queue.enqueue(envelope("r1"), max_waiting=10, ttl_s=TTL_S)
    await queue.take("r1", "proxy-1")

    assert await queue.cancel("r1", entry_id, even_if_taken=True) == "cancelled"
    assert await queue.state("r1") == "cancelled"


async def test_cancelling_a_request_a_proxy_holds_is_pushed_to_that_deployments_proxies(
    queue: DeploymentQueue,
) -> None:
    stop = asyncio.Event()
    heard: list[str] = []
    heard_one = asyncio.Event()

    def on_cancel(request_id: str) -> None:
        heard.append(request_id)
        heard_one.set()

    listener = asyncio.create_task(queue.cancellations(stop, on_cancel))
    queued = await queue.enqueue(envelope("queued"), max_waiting=10, ttl_s=TTL_S)
    held = await queue.enqueue(envelope("held"), max_waiting=10, ttl_s=TTL_S)
    await queue.take("held", "proxy-1")
    # Subscribed once a publish reaches it: keep cancelling the held one until the listener hears.
    async with asyncio.timeout(10):
        await queue.cancel("queued", queued, even_if_taken=True)  # never reached a proxy: nothing to push
        while not heard_one.is_set():
            await queue.redis.hset(keys.request("held"), "state", "taken")
            await queue.cancel("held", held, even_if_taken=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await heard_one.wait()
    stop.set()
    await listener
    assert set(heard) == {"held"}


async def test_cancel_of_a_started_request_needs_even_if_taken(queue: DeploymentQueue, redis: Redis) -> None:
    await open_reply_stream(redis)
    env = envelope("r1")
    entry_id = await queue.enqueue(env, max_waiting=10, ttl_s=TTL_S)
    await queue.take("r1", "proxy-1")
    await queue.start(env, Frame.head("r1", "proxy-1", 200, {}))

    assert await queue.cancel("r1", entry_id, even_if_taken=False) == "started"
    assert await queue.cancel("r1", entry_id, even_if_taken=True) == "cancelled"


async def test_cancel_of_an_unknown_request_reports_nothing(queue: DeploymentQueue) -> None:
    assert await queue.cancel("ghost", b"1-0", even_if_taken=True) is None
    assert await queue.state("ghost") is None


async def test_forget_drops_the_request_state(queue: DeploymentQueue) -> None:
    await queue.enqueue(envelope("r1"), max_waiting=10, ttl_s=TTL_S)

    await queue.forget("r1")

    assert await queue.state("r1") is None


# --- release (handing a request back unserved) --------------------------------------------------------------


async def test_a_released_request_is_queued_again_for_any_proxy(redis: Redis, queue: DeploymentQueue) -> None:
    await queue.ensure_group()
    await queue.enqueue(envelope("r1"), max_waiting=1, ttl_s=TTL_S)
    [delivery] = await queue.read("proxy-1", count=1, block_ms=10)
    await queue.take("r1", "proxy-1")

    new_id = await queue.release(delivery, "proxy-1")

    assert new_id is not None and new_id != delivery.entry_id
    assert await queue.state("r1") == "queued"
    assert await queue.owner("r1") is None
    assert await queue.depth() == (1, 0)
    [again] = await queue.read("proxy-2", count=1, block_ms=10)
    assert (again.entry_id, again.envelope) == (new_id, delivery.envelope)
    assert await queue.take("r1", "proxy-2") == "taken"


async def test_a_released_request_does_not_count_against_the_bound(redis: Redis, queue: DeploymentQueue) -> None:
    await queue.ensure_group()
    await queue.enqueue(envelope("r1"), max_waiting=1, ttl_s=TTL_S)
    [delivery] = await queue.read("proxy-1", count=1, block_ms=10)
    await queue.take("r1", "proxy-1")
    await queue.enqueue(envelope("r2"), max_waiting=1, ttl_s=TTL_S)  # the bound is full again

    assert await queue.release(delivery, "proxy-1") is not None  # accepted already: never refused
    assert await queue.depth() == (2, 0)


@pytest.mark.parametrize("situation", ["not_the_owner", "started", "cancelled"])
async def test_only_the_owner_releases_and_only_before_the_head(
    redis: Redis, queue: DeploymentQueue, situation: str
) -> None:
    await open_reply_stream(redis)
    await queue.ensure_group()
    env = envelope("r1")
    await queue.enqueue(env, max_waiting=1, ttl_s=TTL_S)
    [delivery] = await queue.read("proxy-1", count=1, block_ms=10)
    await queue.take("r1", "proxy-1")
    releaser = "proxy-1"
    if situation == "not_the_owner":
        releaser = "proxy-2"
    elif situation == "started":
        await queue.start(env, Frame.head("r1", "proxy-1", 200, {}))  # bytes may be out: never replayed
    else:
        await queue.cancel("r1", delivery.entry_id, even_if_taken=True)
    before = await queue.state("r1")

    assert await queue.release(delivery, releaser) is None
    assert await queue.state("r1") == before
    assert await queue.depth() == (0, 1)


# --- replies -----------------------------------------------------------------------------------------------


async def test_start_writes_the_head_frame_and_marks_started(queue: DeploymentQueue, redis: Redis) -> None:
    await open_reply_stream(redis)
    env = envelope("r1")
    await queue.enqueue(env, max_waiting=10, ttl_s=TTL_S)
    await queue.take("r1", "proxy-1")
    head = Frame.head("r1", "proxy-1", 200, {"content-type": "text/event-stream"})

    await queue.start(env, head)

    assert await queue.state("r1") == "started"
    entries: Any = await redis.xrange(REPLY)
    assert Frame.from_fields(entries[-1][1]) == head


async def test_start_marks_started_and_writes_the_head_in_one_step(queue: DeploymentQueue, redis: Redis) -> None:
    await open_reply_stream(redis)
    env = envelope("r1")
    await queue.enqueue(env, max_waiting=10, ttl_s=TTL_S)
    await queue.take("r1", "proxy-1")
    head = Frame.head("r1", "proxy-1", 200, {"content-type": "application/json"})

    assert await queue.start(env, head) == "started"

    assert await queue.state("r1") == "started"
    entries: Any = await redis.xrange(REPLY)
    assert [Frame.from_fields(fields) for _, fields in entries if b"rid" in fields] == [head]


async def test_start_never_recreates_a_missing_reply_stream(queue: DeploymentQueue, redis: Redis) -> None:
    env = envelope("r1")
    await queue.enqueue(env, max_waiting=10, ttl_s=TTL_S)
    await queue.take("r1", "proxy-1")

    assert await queue.start(env, Frame.head("r1", "proxy-1", 200, {})) == "gone"

    assert await redis.exists(REPLY) == 0
    assert await queue.state("r1") == "taken"  # nothing was written, so nothing is marked


async def test_only_the_current_owner_starts_a_reply(queue: DeploymentQueue, redis: Redis) -> None:
    # proxy-1 was thought dead (its heartbeat lapsed in a stall) and proxy-2 took the request over.
    await open_reply_stream(redis)
    env = envelope("r1")
    await queue.enqueue(env, max_waiting=10, ttl_s=TTL_S)
    await queue.take("r1", "proxy-1")
    await queue.take("r1", "proxy-2")

    assert await queue.start(env, Frame.head("r1", "proxy-1", 200, {})) == "lost"
    assert await queue.start(env, Frame.head("r1", "proxy-2", 200, {})) == "started"
    assert await queue.start(env, Frame.head("r1", "proxy-2", 200, {})) == "started"  # again: no second head

    entries: Any = await redis.xrange(REPLY)
    assert [Frame.from_fields(f).by for _, f in entries if b"rid" in f] == ["proxy-2"]  # one answer only


async def test_a_cancelled_request_is_never_started(queue: DeploymentQueue, redis: Redis) -> None:
    await open_reply_stream(redis)
    env = envelope("r1")
    entry_id = await queue.enqueue(env, max_waiting=10, ttl_s=TTL_S)
    await queue.take("r1", "proxy-1")
    await queue.cancel("r1", entry_id, even_if_taken=True)

    assert await queue.start(env, Frame.head("r1", "proxy-1", 200, {})) == "lost"

    assert await queue.state("r1") == "cancelled"
    entries: Any = await redis.xrange(REPLY)
    assert [f for _, f in entries if b"rid" in f] == []


# --- saved results (at most once at the runner) -------------------------------------------------------------

ANSWER = SavedResult(200, {"content-type": "application/json"}, b'{"answer": 42}')


async def test_a_saved_result_makes_the_next_take_answer_from_it(queue: DeploymentQueue, redis: Redis) -> None:
    env = envelope("r1")
    await queue.enqueue(env, max_waiting=10, ttl_s=TTL_S)
    assert await queue.take("r1", "proxy-1") == "taken"
    await save_result(redis, "r1", ANSWER, ttl_s=60)  # its API server got the runner's answer, then died

    assert await queue.take("r1", "proxy-2") == "done"
    assert await queue.saved_result("r1") == ANSWER
    assert await queue.owner("r1") == "proxy-2"  # its to relay, fenced like any other start


async def test_a_saved_result_expires(redis: Redis) -> None:
    await save_result(redis, "r1", ANSWER, ttl_s=60)

    assert 0 < await redis.ttl(keys.result("r1")) <= 60


async def test_a_saved_result_survives_a_flushed_script_cache(queue: DeploymentQueue, redis: Redis) -> None:
    await save_result(redis, "r0", ANSWER, ttl_s=0.2)  # a TTL under a second is kept a second, never none
    await redis.script_flush()  # as after a Redis restart: the save's script must be sent again, not fail

    await save_result(redis, "r1", ANSWER, ttl_s=60)

    assert await queue.saved_result("r1") == ANSWER
    assert 0 < await redis.pttl(keys.result("r0")) <= 1000


async def test_finishing_an_answered_request_deletes_its_saved_result(queue: DeploymentQueue, redis: Redis) -> None:
    await queue.ensure_group()
    env = envelope("r1")
    await queue.enqueue(env, max_waiting=10, ttl_s=TTL_S)
    [delivery] = await queue.read("proxy-1", count=1, block_ms=100)
    await save_result(redis, "r1", ANSWER, ttl_s=60)

    await queue.finish(delivery.entry_id, "r1")

    assert await queue.saved_result("r1") is None
    assert await redis.xlen(queue.key) == 0


async def test_a_release_keeps_the_saved_result_for_the_next_taker(queue: DeploymentQueue, redis: Redis) -> None:
    await queue.ensure_group()
    env = envelope("r1")
    await queue.enqueue(env, max_waiting=10, ttl_s=TTL_S)
    [delivery] = await queue.read("proxy-1", count=1, block_ms=100)
    await queue.take("r1", "proxy-1")
    await save_result(redis, "r1", ANSWER, ttl_s=60)  # the API server saved it and died before replying

    assert await queue.release(delivery, "proxy-1") is not None
    [again] = await queue.read("proxy-2", count=1, block_ms=100)

    assert again.envelope.request_id == "r1"
    assert await queue.take("r1", "proxy-2") == "done"


async def test_an_answer_is_written_and_acknowledged_in_one_step(queue: DeploymentQueue, redis: Redis) -> None:
    await queue.ensure_group()
    await open_reply_stream(redis)
    env = envelope("r1")
    await queue.enqueue(env, max_waiting=10, ttl_s=TTL_S)
    [delivery] = await queue.read("proxy-1", count=1, block_ms=100)
    await queue.take("r1", "proxy-1")
    await save_result(redis, "r1", ANSWER, ttl_s=60)
    frames = [Frame.head("r1", "proxy-1", 200, {"content-type": "application/json"}),
              Frame.chunk("r1", "proxy-1", b'{"answer":'), Frame.chunk("r1", "proxy-1", b" 42}"),
              Frame.end("r1", "proxy-1")]  # fmt: skip

    assert await queue.answer(delivery, frames) == "started"
    # Called again, as after a connection lost mid-call: told it is done, and nothing is written twice.
    assert await queue.answer(delivery, frames) == "started"

    entries: Any = await redis.xrange(REPLY)
    assert [Frame.from_fields(f) for _, f in entries if b"rid" in f] == frames
    assert await queue.state("r1") == "started"
    assert await pending_owners(redis, queue) == {}  # acknowledged: never delivered again
    assert await redis.xlen(queue.key) == 0
    assert await queue.saved_result("r1") is None


async def test_only_the_owner_answers_and_never_into_a_missing_reply_stream(
    queue: DeploymentQueue, redis: Redis
) -> None:
    await queue.ensure_group()
    env = envelope("r1")
    await queue.enqueue(env, max_waiting=10, ttl_s=TTL_S)
    [delivery] = await queue.read("proxy-1", count=1, block_ms=100)
    await queue.take("r1", "proxy-1")
    answer = [Frame.head("r1", "proxy-1", 200, {}), Frame.end("r1", "proxy-1")]

    assert await queue.answer(delivery, answer) == "gone"
    await open_reply_stream(redis)
    assert await queue.answer(delivery, [Frame.head("r1", "proxy-2", 200, {}), Frame.end("r1", "proxy-2")]) == "lost"

    entries: Any = await redis.xrange(REPLY)
    assert [f for _, f in entries if b"rid" in f] == []
    assert list((await pending_owners(redis, queue)).values()) == ["proxy-1"]  # still its to answer


async def test_drops_are_counted_per_request(queue: DeploymentQueue) -> None:
    await queue.enqueue(envelope("r1"), max_waiting=10, ttl_s=TTL_S)

    assert [await queue.count_drop("r1") for _ in range(3)] == [1, 2, 3]


async def test_send_appends_frames_in_order(queue: DeploymentQueue, redis: Redis) -> None:
    await open_reply_stream(redis)
    sent = [Frame.chunk("r1", "proxy-1", b"data: 1\n\n"), Frame.chunk("r1", "proxy-1", b"data: 2\n\n")]
    sent.append(Frame.end("r1", "proxy-1"))

    for frame in sent:
        await queue.send(REPLY, frame)

    entries: Any = await redis.xrange(REPLY)
    got = [Frame.from_fields(fields) for _, fields in entries if b"rid" in fields]
    assert got == sent


async def test_send_never_recreates_a_missing_reply_stream(queue: DeploymentQueue, redis: Redis) -> None:
    await queue.send(REPLY, Frame.fail("r1", "proxy-1", 502, "boom", "upstream_failed"))

    assert await redis.exists(REPLY) == 0


async def test_finish_acknowledges_and_deletes_the_entry(queue: DeploymentQueue, redis: Redis) -> None:
    await queue.ensure_group()
    await queue.enqueue(envelope("r1"), max_waiting=10, ttl_s=TTL_S)
    [delivery] = await queue.read("proxy-1", count=1, block_ms=100)
    assert await pending_owners(redis, queue) == {delivery.entry_id: "proxy-1"}

    await queue.finish(delivery.entry_id)

    assert await pending_owners(redis, queue) == {}
    assert await redis.xlen(queue.key) == 0
    assert await queue.depth() == (0, 0)


# --- depth -------------------------------------------------------------------------------------------------


async def test_depth_of_a_queue_that_never_existed_is_zero(queue: DeploymentQueue) -> None:
    assert await queue.depth() == (0, 0)


async def test_depth_counts_waiting_requests_before_the_consumer_group_exists(queue: DeploymentQueue) -> None:
    # Cold start: the interceptor enqueues before any proxy has ever created the group.
    await queue.enqueue(envelope("r1"), max_waiting=10, ttl_s=TTL_S)
    await queue.enqueue(envelope("r2"), max_waiting=10, ttl_s=TTL_S)

    assert await queue.depth() == (2, 0)


async def test_depth_splits_waiting_from_in_flight(queue: DeploymentQueue) -> None:
    await queue.ensure_group()
    assert await queue.depth() == (0, 0)
    for i in range(3):
        await queue.enqueue(envelope(f"r{i}"), max_waiting=10, ttl_s=TTL_S)
    assert await queue.depth() == (3, 0)

    [delivery] = await queue.read("proxy-1", count=1, block_ms=100)
    assert await queue.depth() == (2, 1)

    await queue.finish(delivery.entry_id)
    assert await queue.depth() == (2, 0)


# --- reclaim -----------------------------------------------------------------------------------------------


async def test_reclaim_claims_entries_of_a_dead_consumer_as_redelivered(redis: Redis, queue: DeploymentQueue) -> None:
    await queue.ensure_group()
    for i in range(3):
        await queue.enqueue(envelope(f"r{i}"), max_waiting=10, ttl_s=TTL_S)
    dead = await queue.read("proxy-dead", count=2, block_ms=100)
    live = await queue.read("proxy-live", count=1, block_ms=100)

    claimed = await queue.reclaim("proxy-new", alive_except("proxy-dead"), count=10)

    assert sorted(d.entry_id for d in claimed) == sorted(d.entry_id for d in dead)
    assert all(d.redelivered for d in claimed)
    assert {d.envelope.request_id for d in claimed} == {"r0", "r1"}
    owners = await pending_owners(redis, queue)
    assert owners == {dead[0].entry_id: "proxy-new", dead[1].entry_id: "proxy-new", live[0].entry_id: "proxy-live"}
    consumers: Any = await redis.xinfo_consumers(queue.key, keys.GROUP)
    assert "proxy-dead" not in {c["name"].decode() for c in consumers}  # its last entry is gone: dropped


async def test_reclaim_leaves_entries_of_live_consumers_alone(redis: Redis, queue: DeploymentQueue) -> None:
    await queue.ensure_group()
    for i in range(2):
        await queue.enqueue(envelope(f"r{i}"), max_waiting=10, ttl_s=TTL_S)
    held = await queue.read("proxy-1", count=2, block_ms=100)
    asked: list[str] = []

    async def is_alive(owner: str) -> bool:
        asked.append(owner)
        return True

    assert await queue.reclaim("proxy-2", is_alive, count=10) == []
    assert await pending_owners(redis, queue) == {d.entry_id: "proxy-1" for d in held}
    assert asked == ["proxy-1"]  # one verdict per owner, not per entry


async def test_reclaim_never_asks_about_or_takes_its_own_entries(redis: Redis, queue: DeploymentQueue) -> None:
    await queue.ensure_group()
    await queue.enqueue(envelope("r1"), max_waiting=10, ttl_s=TTL_S)
    [held] = await queue.read("proxy-1", count=1, block_ms=100)

    async def is_alive(owner: str) -> bool:
        raise AssertionError(f"asked about {owner}")

    assert await queue.reclaim("proxy-1", is_alive, count=10) == []
    assert await pending_owners(redis, queue) == {held.entry_id: "proxy-1"}


async def test_reclaim_claims_at_most_count_entries(redis: Redis, queue: DeploymentQueue) -> None:
    await queue.ensure_group()
    for i in range(3):
        await queue.enqueue(envelope(f"r{i}"), max_waiting=10, ttl_s=TTL_S)
    await queue.read("proxy-dead", count=3, block_ms=100)

    assert await queue.reclaim("proxy-new", alive_except("proxy-dead"), count=0) == []
    claimed = await queue.reclaim("proxy-new", alive_except("proxy-dead"), count=2)

    assert len(claimed) == 2
    assert sorted((await pending_owners(redis, queue)).values()) == ["proxy-dead", "proxy-new", "proxy-new"]


async def test_reclaim_takes_started_entries_beyond_count(redis: Redis, queue: DeploymentQueue) -> None:
    # A dead proxy's streams under way need only their error frame: a reclaimer with no free slot still takes them.
    await queue.ensure_group()
    await open_reply_stream(redis)
    for i in range(3):
        await queue.enqueue(envelope(f"r{i}"), max_waiting=10, ttl_s=TTL_S)
    await queue.read("proxy-dead", count=3, block_ms=100)
    for rid in ("r0", "r2"):
        await queue.take(rid, "proxy-dead")
    await queue.start(envelope("r2"), Frame.head("r2", "proxy-dead", 200, {}))

    claimed = await queue.reclaim("proxy-new", alive_except("proxy-dead"), count=0)

    assert [d.envelope.request_id for d in claimed] == ["r2"]
    assert sorted((await pending_owners(redis, queue)).values()) == ["proxy-dead", "proxy-dead", "proxy-new"]


async def test_racing_reclaimers_never_claim_the_same_entry(redis: Redis, queue: DeploymentQueue) -> None:
    await queue.ensure_group()
    for round_no in range(5):
        ids = [await queue.enqueue(envelope(f"r{round_no}-{i}"), max_waiting=100, ttl_s=TTL_S) for i in range(20)]
        dead = f"proxy-dead-{round_no}"
        assert len(await queue.read(dead, count=20, block_ms=100)) == 20

        first, second = await asyncio.gather(
            queue.reclaim(f"rescuer-a-{round_no}", alive_except(dead), count=100),
            queue.reclaim(f"rescuer-b-{round_no}", alive_except(dead), count=100),
        )

        a = {d.entry_id for d in first}
        b = {d.entry_id for d in second}
        assert a.isdisjoint(b), f"round {round_no}: both claimed {sorted(a & b)}"
        assert a | b == set(ids)
        owners = await pending_owners(redis, queue)
        assert all(owners[d] == f"rescuer-a-{round_no}" for d in a)
        assert all(owners[d] == f"rescuer-b-{round_no}" for d in b)
        for entry_id in ids:
            await queue.finish(entry_id)


async def test_reclaimer_with_a_stale_view_does_not_take_entries_another_reclaimer_claimed(
    redis: Redis, queue: DeploymentQueue
) -> None:
    """B lists the pending entries, then is slow to judge the owner; A claims everything meanwhile."""
    await queue.ensure_group()
    ids = [await queue.enqueue(envelope(f"r{i}"), max_waiting=100, ttl_s=TTL_S) for i in range(5)]
    await queue.read("proxy-dead", count=5, block_ms=100)
    b_has_listed = asyncio.Event()
    a_done = asyncio.Event()

    async def a_verdict(owner: str) -> bool:
        await b_has_listed.wait()  # A claims only after B has seen the entries as the dead owner's
        return owner != "proxy-dead"

    async def b_verdict(owner: str) -> bool:
        pending: Any = await redis.xpending_range(queue.key, keys.GROUP, min="-", max="+", count=100)
        seen_idle = max(int(p["time_since_delivered"]) for p in pending)  # >= what B's listing saw
        b_has_listed.set()
        await a_done.wait()
        async with asyncio.timeout(5):  # let the entries idle under A for longer than B's listing saw
            while True:
                pending = await redis.xpending_range(queue.key, keys.GROUP, min="-", max="+", count=100)
                if all(int(p["time_since_delivered"]) > seen_idle for p in pending):
                    break
        return owner != "proxy-dead"

    async def reclaim_a() -> list[Any]:
        try:
            return await queue.reclaim("rescuer-a", a_verdict, count=100)
        finally:
            a_done.set()

    first, second = await asyncio.gather(reclaim_a(), queue.reclaim("rescuer-b", b_verdict, count=100))

    assert sorted(d.entry_id for d in first) == sorted(ids)
    assert second == []
    assert set((await pending_owners(redis, queue)).values()) == {"rescuer-a"}


async def test_reclaim_cleans_up_an_entry_cancelled_while_pending(redis: Redis, queue: DeploymentQueue) -> None:
    await queue.ensure_group()
    entry_id = await queue.enqueue(envelope("r1"), max_waiting=10, ttl_s=TTL_S)
    kept_id = await queue.enqueue(envelope("r2"), max_waiting=10, ttl_s=TTL_S)
    await queue.read("proxy-dead", count=2, block_ms=100)
    # Read but not yet taken: still 'queued', so the client's cancel deletes the entry under the pending slot.
    assert await queue.cancel("r1", entry_id, even_if_taken=False) == "cancelled"

    claimed = await queue.reclaim("proxy-new", alive_except("proxy-dead"), count=10)

    assert [(d.entry_id, d.envelope.request_id) for d in claimed] == [(kept_id, "r2")]
    assert await pending_owners(redis, queue) == {kept_id: "proxy-new"}
    assert await queue.depth() == (0, 1)


async def test_reclaim_of_only_cancelled_entries_returns_nothing_and_leaves_nothing_pending(
    redis: Redis, queue: DeploymentQueue
) -> None:
    await queue.ensure_group()
    entry_id = await queue.enqueue(envelope("r1"), max_waiting=10, ttl_s=TTL_S)
    await queue.read("proxy-dead", count=1, block_ms=100)
    await queue.cancel("r1", entry_id, even_if_taken=False)

    assert await queue.reclaim("proxy-new", alive_except("proxy-dead"), count=10) == []
    assert await pending_owners(redis, queue) == {}


async def test_reclaimed_delivery_can_be_taken_by_the_new_consumer(queue: DeploymentQueue) -> None:
    await queue.ensure_group()
    await queue.enqueue(envelope("r1"), max_waiting=10, ttl_s=TTL_S)
    [first] = await queue.read("proxy-dead", count=1, block_ms=100)
    assert await queue.take("r1", "proxy-dead") == "taken"

    [again] = await queue.reclaim("proxy-new", alive_except("proxy-dead"), count=1)

    assert again.entry_id == first.entry_id
    assert again.envelope == first.envelope
    assert await queue.take("r1", "proxy-new") == "taken"


async def test_reclaim_finds_a_dead_consumers_entry_behind_many_live_ones(queue: DeploymentQueue) -> None:
    await queue.ensure_group()
    for i in range(250):
        await queue.enqueue(envelope(f"live-{i}"), max_waiting=1000, ttl_s=60)
    assert len(await queue.read("live", count=250, block_ms=10)) == 250
    await queue.enqueue(envelope("orphan"), max_waiting=1000, ttl_s=60)
    assert len(await queue.read("dead", count=1, block_ms=10)) == 1
    claimed = await queue.reclaim("rescuer", alive_except("dead"), count=5)
    assert [d.envelope.request_id for d in claimed] == ["orphan"]
    assert all(d.redelivered for d in claimed)


async def test_an_entry_its_own_consumer_no_longer_serves_is_found_once_idle(
    queue: DeploymentQueue, redis: Redis
) -> None:
    # proxy-1's task for r1 ended without acknowledging it (Redis was unreachable); r2 it still serves.
    await queue.ensure_group()
    for rid in ("r1", "r2", "r3"):
        await queue.enqueue(envelope(rid), max_waiting=10, ttl_s=TTL_S)
    deliveries = await queue.read("proxy-1", count=3, block_ms=100)
    by_rid = {d.envelope.request_id: d for d in deliveries}
    await redis.xdel(queue.key, by_rid["r3"].entry_id)  # cancelled while pending: nothing left to serve
    held = {by_rid["r2"].entry_id}

    assert await queue.orphans("proxy-1", held, min_idle_ms=60_000, count=10) == []  # just read: left alone
    await asyncio.sleep(0.05)  # the idle time is Redis's clock; a short pause is the only way to age an entry
    orphans = await queue.orphans("proxy-1", held, min_idle_ms=10, count=10)

    assert [(d.envelope.request_id, d.redelivered) for d in orphans] == [("r1", True)]
    assert set((await pending_owners(redis, queue)).keys()) == {by_rid["r1"].entry_id, by_rid["r2"].entry_id}
    # Claimed again just now: not found again while it is being served.
    assert await queue.orphans("proxy-1", held, min_idle_ms=10_000, count=10) == []


async def test_take_with_the_reply_stream_says_orphaned_when_it_is_gone(redis: Redis) -> None:
    queue = DeploymentQueue(redis, "d")
    await queue.ensure_group()
    await queue.enqueue(envelope("alive"), 10, TTL_S)
    await queue.enqueue(envelope("orphan"), 10, TTL_S)
    await redis.xadd(REPLY, {"kind": "open"})
    assert await queue.take("alive", "proxy-1", REPLY) == "taken"
    await redis.delete(REPLY)  # its interceptor died
    assert await queue.take("orphan", "proxy-1", REPLY) == "orphaned"
    assert await queue.states(["alive", "orphan", "never"]) == ["taken", "taken", None]


async def test_end_writes_the_last_frame_and_acknowledges_in_one_step(redis: Redis) -> None:
    queue = DeploymentQueue(redis, "d")
    await queue.ensure_group()
    await queue.enqueue(envelope("r1"), 10, TTL_S)
    await redis.xadd(REPLY, {"kind": "open"})
    (delivery,) = await queue.read("proxy-1", count=1, block_ms=100)
    await queue.take("r1", "proxy-1", REPLY)
    await save_result(redis, "r1", SavedResult(200, {}, b"x"), 60)
    assert await queue.end(delivery, Frame.end("r1", "proxy-1"))
    last = (await redis.xrevrange(REPLY, count=1))[0][1]
    assert Frame.from_fields(last).kind.value == "end"
    assert await queue.depth() == (0, 0)  # acknowledged and deleted
    assert not await redis.exists(keys.result("r1"))
    await redis.delete(REPLY)
    assert not await queue.end(delivery, Frame.end("r1", "proxy-1"))  # reply stream gone: not recreated
    assert not await redis.exists(REPLY)


async def test_end_without_the_group_writes_and_deletes_as_the_transaction_did(redis: Redis) -> None:
    queue = DeploymentQueue(redis, "d")
    await queue.ensure_group()
    await queue.enqueue(envelope("r1"), 10, TTL_S)
    await redis.xadd(REPLY, {"kind": "open"})
    (delivery,) = await queue.read("proxy-1", count=1, block_ms=100)
    await redis.xgroup_destroy(queue.key, keys.GROUP)  # as if Redis came back without the queue's group

    assert await queue.end(delivery, Frame.end("r1", "proxy-1"))  # XACK finds nothing to acknowledge: no error
    last = (await redis.xrevrange(REPLY, count=1))[0][1]
    assert Frame.from_fields(last).kind.value == "end"  # the frame went out all the same, as in the transaction
    assert await redis.xlen(queue.key) == 0


async def test_a_blocking_read_on_its_own_client_holds_up_no_batch(redis: Redis, redis_server: EmbeddedRedis) -> None:
    batching = connect(redis_server.url, batched=True)
    try:
        queue = DeploymentQueue(batching, "d", reader=redis)
        await queue.ensure_group()
        reading = asyncio.create_task(queue.read("proxy-1", count=1, block_ms=30_000))  # nothing queued: it blocks
        await asyncio.sleep(0)  # the read is sent in this turn; the state check below is issued in the next
        assert await queue.state("r1") is None  # answered while the read still blocks: not in a batch with it
        assert not reading.done()
        await queue.enqueue(envelope("r1"), 10, TTL_S)
        (delivery,) = await reading
        assert delivery.envelope.request_id == "r1"
    finally:
        await batching.aclose()
