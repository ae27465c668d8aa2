"""The dashboard's history on a real Redis: written per step, merged across writers, bounded to the window."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tiffin.common.redis_conn import connect_bounded
from tiffin.contracts import history, keys
from tiffin.contracts.dashboard import read_series
from tiffin.contracts.history import BUCKETS, POINTS, STEP_S, WINDOW_S, TrafficRecorder, quantile, record_replicas
from tiffin.local.ports import free_port

DEP = "hist"


def _index(series: dict[str, object], step_s: int) -> int:
    t = series["t"]
    assert isinstance(t, list)
    return t.index(step_s)


async def test_replica_counts_land_in_their_step_and_read_back_as_series(redis: Redis) -> None:
    now = time.time()
    await record_replicas(redis, DEP, "api", ready=1, desired=2, at_s=now - 60)
    await record_replicas(redis, DEP, "runner", ready=0, desired=1, at_s=now - 60)
    await record_replicas(redis, DEP, "api", ready=2, desired=2, at_s=now)

    series = await read_series(redis, DEP, now)
    assert series["step_s"] == STEP_S and len(series["t"]) == POINTS
    assert series["t"][-1] == history.step_of(now)
    earlier, latest = _index(series, history.step_of(now - 60)), _index(series, history.step_of(now))
    assert (series["api_ready"][earlier], series["api_desired"][earlier]) == (1, 2)
    assert (series["runner_ready"][earlier], series["runner_desired"][earlier]) == (0, 1)
    assert series["api_ready"][latest] == 2
    assert series["runner_ready"][latest] is None  # nothing recorded is null, not zero
    assert series["requests_per_s"][latest] is None


async def test_two_interceptors_add_into_the_same_step_and_quantiles_come_from_the_merged_buckets(
    redis: Redis,
) -> None:
    at = history.step_of(time.time()) - 30.0 + 1  # inside a step that is over, so its rate is per 10 s
    one, two = TrafficRecorder([DEP]), TrafficRecorder([DEP])
    for _ in range(9):
        one.observe(DEP, error=False, queue_wait_s=0.02, upstream_s=0.3, at_s=at)
    one.observe(DEP, error=True, queue_wait_s=0.02, upstream_s=0.3, at_s=at)
    for _ in range(10):
        two.observe(DEP, error=False, queue_wait_s=4.0, upstream_s=40.0, at_s=at + 5)
    await one.flush(redis)
    await two.flush(redis)

    step = history.step_of(at)
    raw = await redis.hgetall(keys.history_step(DEP, step))
    assert int(raw[b"requests"]) == 20 and int(raw[b"errors"]) == 1  # HINCRBY: both writers' counts

    series = await read_series(redis, DEP, time.time())
    i = _index(series, step)
    assert series["requests_per_s"][i] == pytest.approx(2.0)  # 20 requests over 10 s
    assert series["errors_per_s"][i] == pytest.approx(0.1)
    # Half fast, half slow: the median sits at the top of the fast bucket, p95 inside the slow one.
    assert series["queue_wait_p50_s"][i] == pytest.approx(0.025)
    assert 2.5 < series["queue_wait_p95_s"][i] <= 5
    assert 30 < series["upstream_p95_s"][i] <= 60
    assert series["upstream_p50_s"][i] == pytest.approx(0.5)


def test_quantiles_interpolate_within_the_bucket_like_prometheus() -> None:
    counts = [0] * (len(BUCKETS) + 1)
    assert quantile(counts, 0.5) is None
    counts[history.bucket_of(0.7)] = 4  # the (0.5, 1] bucket
    assert quantile(counts, 0.5) == pytest.approx(0.75)
    assert quantile(counts, 1.0) == pytest.approx(1.0)
    counts[-1] = 100  # beyond the last bound: the last bound is the best it can say
    assert quantile(counts, 0.99) == BUCKETS[-1]
    assert history.bucket_of(0.5) == history.bucket_of(0.4)  # a bound belongs to its own bucket (le)


async def test_history_stays_within_the_window(redis: Redis) -> None:
    now = time.time()
    recorder = TrafficRecorder([DEP])
    # Two hours of writes, one per step, as if the writers had been running all along.
    for back in range(0, 2 * WINDOW_S, STEP_S):
        await record_replicas(redis, DEP, "runner", ready=1, desired=1, at_s=now - back)
        recorder.observe(DEP, error=False, queue_wait_s=0.01, upstream_s=0.1, at_s=now - back)
    await recorder.flush(redis, at_s=now)

    steps = [k async for k in redis.scan_iter(match=f"tiffin:history:{DEP}:10s:*")]
    minutes = [k async for k in redis.scan_iter(match=f"tiffin:history:{DEP}:1m:*")]
    assert len(steps) <= POINTS + 2
    assert len(minutes) <= history.SPARK_POINTS + 2
    oldest_kept = min(int(k.rsplit(b":", 1)[1]) for k in steps)
    assert oldest_kept >= now - WINDOW_S - 2 * STEP_S
    assert await redis.exists(keys.history_step(DEP, history.step_of(now - WINDOW_S - 60))) == 0
    for key in steps:  # each step goes when it leaves the window, however late it was written
        # -2: the oldest step left the window since the scan (gone, as it should); -1 would be no expiry at all.
        ttl_ms = await redis.pttl(key)
        assert ttl_ms == -2 or 0 < ttl_ms <= (WINDOW_S + 2 * STEP_S) * 1000, (key, ttl_ms)


async def test_counts_survive_a_redis_outage_and_are_written_by_the_next_flush(redis: Redis) -> None:
    recorder = TrafficRecorder([DEP])
    now = time.time()
    recorder.observe(DEP, error=False, queue_wait_s=0.01, upstream_s=0.1, at_s=now)
    recorder.observe(DEP, error=False, at_s=now - 2 * WINDOW_S)  # out of the window: not worth keeping
    down = connect_bounded(f"redis://127.0.0.1:{free_port()}/0", max_connections=2, timeout_s=1)  # nobody there
    try:
        with pytest.raises((RedisError, OSError)):
            await recorder.flush(down, at_s=now)
    finally:
        await down.aclose()

    await recorder.flush(redis, at_s=now)
    raw = await redis.hgetall(keys.history_step(DEP, history.step_of(now)))
    assert int(raw[b"requests"]) == 1
    assert await redis.exists(keys.history_step(DEP, history.step_of(now - 2 * WINDOW_S))) == 0


async def test_an_interceptor_with_no_traffic_records_zero_not_nothing(redis: Redis) -> None:
    now = time.time()
    await TrafficRecorder([DEP, "other"]).flush(redis, at_s=now)
    series = await read_series(redis, "other", now)
    assert series["requests_per_s"][-1] == 0.0 and series["errors_per_s"][-1] == 0.0
    assert series["upstream_p50_s"][-1] is None  # no request, no quantile
