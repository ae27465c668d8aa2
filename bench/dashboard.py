"""What a dashboard poll costs with many deployments: the overview and one detail, against a full hour of history.

    .venv/bin/python bench/dashboard.py --deployments 50 --rounds 20

Starts its own redis-server, fills every deployment with an hour of 10 s steps (replicas and requests, as the
autoscaler and interceptors write them), two replicas, a waiting request and cold-start records, then times
`GET /api/dashboard`'s assembly (`tiffin.contracts.dashboard.summary`), one deployment's detail, and the
statuses alone (`read_statuses`: what `/api/status` and the /metrics gauges read).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from tiffin.common.redis_conn import connect
from tiffin.contracts import history, keys
from tiffin.contracts.coldstart import ColdStart
from tiffin.contracts.config import Deployment
from tiffin.contracts.dashboard import detail, summary
from tiffin.contracts.frames import Envelope
from tiffin.contracts.queue import DeploymentQueue
from tiffin.contracts.registry import Registry
from tiffin.contracts.status import read_statuses
from tiffin.local.redis_server import EmbeddedRedis


async def fill(redis: Redis, names: list[str]) -> None:
    now = time.time()
    for name in names:
        recorder = history.TrafficRecorder([name])
        for back in range(0, history.WINDOW_S, history.STEP_S):
            await history.record_replicas(redis, name, "api", 1, 1, at_s=now - back)
            await history.record_replicas(redis, name, "runner", 1, 1, at_s=now - back)
            for _ in range(5):
                recorder.observe(name, error=False, queue_wait_s=0.02, upstream_s=1.5, at_s=now - back)
        await recorder.flush(redis, at_s=now)
        for component in ("api", "runner"):
            info = {"url": "http://x", "concurrency": 8, "started_at": now}
            await Registry(redis, name, component, ttl_s=600).register(f"{name}-{component}", info)  # type: ignore[arg-type]
        queue = DeploymentQueue(redis, name)
        await queue.ensure_group()
        envelope = Envelope(f"{name}-r", "tiffin:reply:x", "/v1/chat/completions", b"{}", {}, int(now * 1000),
                            int(now * 1000) + 60_000, 60)  # fmt: skip
        await queue.admit(envelope, max_waiting=100, ttl_s=600)
        for i in range(20):
            record = ColdStart(f"c{i}", int((now - 60 * i) * 1000), 6000.0 + i, {"activated": 30.0}, "ok")
            await redis.lpush(keys.cold_starts(name), json.dumps(record.to_json()))


async def timed(rounds: int, call: object) -> list[float]:
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        await call()  # type: ignore[operator]
        out.append((time.perf_counter() - started) * 1000)
    return out


async def main(count: int, rounds: int) -> None:
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="tiffin-bench-")))
    server.start()
    redis = connect(server.url)
    try:
        deployments = [Deployment.model_validate({"name": f"dep-{i}", "model": "smollm2"}) for i in range(count)]
        await fill(redis, [d.name for d in deployments])
        body = json.dumps(await summary(redis, deployments)).encode()
        overview = f"overview ({count} deployments, {len(body) // 1024} KiB of JSON)"
        results = {
            overview: await timed(rounds, lambda: summary(redis, deployments)),
            "detail (one deployment)": await timed(rounds, lambda: detail(redis, deployments[0])),
            f"statuses only ({count} deployments)": await timed(rounds, lambda: read_statuses(redis, deployments)),
        }  # fmt: skip
        for what, times in results.items():
            print(f"{what:<60} p50 {statistics.median(times):7.1f} ms   max {max(times):7.1f} ms")
    finally:
        await redis.aclose()
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.deployments, args.rounds))
