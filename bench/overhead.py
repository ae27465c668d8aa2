"""What the gateway costs: the same load sent straight to an OpenAI-compatible upstream and through tiffin.

    .venv/bin/python bench/overhead.py [--requests 400] [--concurrency 16] [--rounds 3] [--plain-http]

Runs `tiffin up` with tests/upstream.py as the runner (an echo server, so the engine's own time is ~0 and what
is measured is tiffin's path: interceptor -> Redis -> proxy -> API server -> runner and back). Rounds alternate
direct and tiffin runs on this machine and the report gives ratios, since absolute timings on shared machines
are noisy. tiffin is reached over HTTPS with its local CA, as `tiffin up` serves by default (the direct baseline
is plain HTTP); `--plain-http` measures the path without TLS, as behind a TLS-terminating proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tiffin.common.redis_conn import connect  # noqa: E402
from tiffin.contracts.registry import Registry  # noqa: E402
from tiffin.local.ports import free_port  # noqa: E402
from tiffin.local.redis_server import redis_data_dir, running_url  # noqa: E402


def write_config(folder: Path) -> Path:
    (folder / "model").mkdir()
    (folder / "model" / "config.json").write_text("{}")
    upstream = [sys.executable, str(ROOT / "tests" / "upstream.py"), "--port", "{port}",
                "--served-model-name", "{served_model_name}"]  # fmt: skip
    # Kept warm (min 1 of each): this measures the request path, not cold starts (bench/activation.py).
    # With an API key, as in production; its limits far above this load, so each request pays the full check
    # (key lookup, the per-key limit script, the slot release) without being refused.
    config = {"name": "echo", "model": str(folder / "model"), "api": {"concurrency": 64, "min_replicas": 1},
              "runner": {"command": upstream, "concurrency": 64, "min_replicas": 1},
              "auth": {"per_key": {"requests_per_second": 1e6, "burst": 1000000, "concurrency": 100000}}}  # fmt: skip
    path = folder / "echo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(folder: Path, port: int, admin: int, plain_http: bool) -> tuple[subprocess.Popen[bytes], IO[str]]:
    """`tiffin up` in the background, its output in folder/up.log."""
    log = (folder / "up.log").open("w")
    command = [sys.executable, "-m", "tiffin", "up", str(write_config(folder)), "--port", str(port),
               "--admin-port", str(admin), "--state-dir", str(folder / "state"),
               *(["--plain-http"] if plain_http else [])]  # fmt: skip
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log


async def registered_runner(state_dir: Path, name: str = "echo") -> str:
    """The warm runner's own URL, from the registry in the Redis of `tiffin up`'s state (the direct baseline)."""
    url = running_url(redis_data_dir(state_dir))  # the printed URL has no password
    assert url, f"no Redis running for {state_dir}"
    redis = connect(url)
    try:
        deadline = time.monotonic() + 120
        while not (runners := await Registry(redis, name, "runner").ready()):
            assert time.monotonic() < deadline, "the warm runner never registered"
            await asyncio.sleep(0.2)
        runner: str = next(iter(runners.values()))["url"]
        return runner
    finally:
        await redis.aclose()


async def load(
    url: str, requests: int, concurrency: int, stream: bool, tls: ssl.SSLContext | None, key: str = ""
) -> list[float]:
    """Latencies (s) of `requests` chat completions sent `concurrency` at a time."""
    body = {"model": "echo", "stream": stream,
            "messages": [{"role": "user", "content": "the quick brown fox jumps over the lazy dog"}]}  # fmt: skip
    latencies: list[float] = []
    todo = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=tls if url.startswith("https:") else True)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            for _ in todo:
                started = time.perf_counter()
                async with session.post(url + "/v1/chat/completions", json=body) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plain-http", action="store_true", help="run tiffin without TLS (default: HTTPS)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port, admin = free_port(), free_port()
        up, log = launch(folder, port, admin, args.plain_http)
        try:
            deadline = time.monotonic() + 120
            while "ready: echo" not in (text := (folder / "up.log").read_text()):
                assert up.poll() is None and time.monotonic() < deadline, text
                await asyncio.sleep(0.2)
            runner_url = await registered_runner(folder / "state")
            found = re.search(r"echo: API key \(shown only now[^:]*: (tfn_\S+)", text)
            assert found, text
            key = found.group(1)
            scheme = "http" if args.plain_http else "https"
            targets = {"direct": runner_url, "tiffin": f"{scheme}://127.0.0.1:{port}"}
            tls = None if args.plain_http else ssl.create_default_context(cafile=folder / "state" / "tls" / "ca.pem")
            for stream in (False, True):
                for url in targets.values():  # warm-up: connections, caches
                    await load(url, 50, args.concurrency, stream, tls, key)
                results: dict[str, list[float]] = {name: [] for name in targets}
                walls: dict[str, float] = dict.fromkeys(targets, 0.0)
                for _ in range(args.rounds):
                    for name, url in targets.items():
                        started = time.perf_counter()
                        results[name] += await load(url, args.requests, args.concurrency, stream, tls, key)
                        walls[name] += time.perf_counter() - started
                kind = "streaming" if stream else "non-streaming"
                print(f"\n{kind}: {args.rounds} x {args.requests} requests, concurrency {args.concurrency}")
                print(f"{'':8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'req/s':>8}")
                for name, lat in results.items():
                    rps = len(lat) / walls[name]
                    print(f"{name:8} {pct(lat, 0.5):8.2f} {pct(lat, 0.99):8.2f} "
                          f"{statistics.mean(lat) * 1000:8.2f} {rps:8.0f}")  # fmt: skip
                d, t = results["direct"], results["tiffin"]
                throughput = (len(t) / walls["tiffin"]) / (len(d) / walls["direct"])
                p50, p99 = pct(t, 0.5) / pct(d, 0.5), pct(t, 0.99) / pct(d, 0.99)
                print(f"ratio tiffin/direct: p50 x{p50:.1f}, p99 x{p99:.1f}, throughput x{throughput:.2f}")
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(120)
            log.close()


if __name__ == "__main__":
    asyncio.run(main())
