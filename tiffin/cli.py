"""The `tiffin` command: `up` runs everything locally in the foreground; `check` validates deployment files."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import socket
import sys
import time
from pathlib import Path

from tiffin.config import Deployment, load_deployments
from tiffin.exceptions import ConfigError, ModelError, RedisServerError
from tiffin.local import ProcessSpec, Supervisor
from tiffin.models import default_cache_dir, resolve_model
from tiffin.redis_server import EmbeddedRedis, free_port


def say(message: str) -> None:
    print(f"tiffin: {message}", flush=True)


def _say_for(name: str, message: str) -> None:
    say(f"{name}: {message}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiffin", description="Serverless OpenAI-compatible endpoints for LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run tiffin on this machine in the foreground (Ctrl-C stops it)")
    up.add_argument("configs", nargs="+", type=Path, metavar="CONFIG", help="deployment YAML files or folders")
    up.add_argument("--state-dir", type=Path, default=Path(os.environ.get("TIFFIN_STATE_DIR", ".state")),
                    help="Redis data and logs (default: ./.state or TIFFIN_STATE_DIR)")  # fmt: skip
    up.add_argument("--cache-dir", type=Path, default=None, help="converted models (default: ~/.cache/tiffin/models)")
    up.add_argument("--host", default="127.0.0.1", help="public listener address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8080, help="public listener port (default 8080)")
    up.add_argument("--admin-port", type=int, default=9090, help="admin port: /healthz, /readyz, /metrics")
    check = sub.add_parser("check", help="validate deployment files and exit")
    check.add_argument("configs", nargs="+", type=Path, metavar="CONFIG")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        deployments = load_deployments(args.configs)
    except ConfigError as exc:
        print("tiffin: the deployment configuration is invalid; nothing was started:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.command == "check":
        for dep in deployments:
            say(f"{dep.name}: ok (model {dep.model}, served as '{dep.model_name}', prefix {dep.routing.path_prefix})")
        return
    try:
        raise SystemExit(asyncio.run(up(args, deployments)))
    except (ModelError, RedisServerError) as exc:
        print(f"tiffin: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


async def up(args: argparse.Namespace, deployments: list[Deployment]) -> int:
    """Prepare models, start Redis and every component, wait until ready, run until a signal."""
    for port in (args.port, args.admin_port):
        if not _port_free(args.host, port):
            say(f"port {port} on {args.host} is in use; pick another with --port / --admin-port")
            return 1
    state_dir: Path = args.state_dir.resolve()
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    cache_dir: Path = (args.cache_dir or default_cache_dir()).resolve()

    for dep in deployments:
        progress = functools.partial(_say_for, dep.name)
        model = await asyncio.to_thread(resolve_model, dep.model, cache_dir, progress)
        say(f"{dep.name}: model {model.path}")

    redis: EmbeddedRedis | None = None
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        say(f"redis       external, {redis_url}")
    else:
        redis = EmbeddedRedis(state_dir / "redis")
        await asyncio.to_thread(redis.start)
        redis_url = redis.url
        say(f"redis       embedded, {redis_url} (data: {redis.data_dir})")

    config_env = os.pathsep.join(str(p.resolve()) for p in args.configs)
    common = {"TIFFIN_CONFIG": config_env, "REDIS_URL": redis_url, "TIFFIN_CACHE_DIR": str(cache_dir)}
    supervisor = Supervisor(log_dir, say)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        runners, apis, proxies = [], [], []
        for dep in deployments:
            runner_port, api_port = free_port(), free_port()
            dep_env = {**common, "TIFFIN_DEPLOYMENT": dep.name}
            engine = "custom command" if dep.runner.command else "vLLM"
            runners.append(
                ProcessSpec(
                    f"{dep.name}-runner-1",
                    "runtime.runner",
                    stop_timeout_s=45,
                    env={
                        **dep_env,
                        "TIFFIN_REPLICA_ID": f"{dep.name}-runner-1",
                        "TIFFIN_RUNNER_PORT": str(runner_port),
                    },
                )
            )
            apis.append(
                ProcessSpec(
                    f"{dep.name}-api-1",
                    "runtime.api",
                    env={**dep_env, "TIFFIN_REPLICA_ID": f"{dep.name}-api-1", "TIFFIN_API_PORT": str(api_port)},
                )
            )
            proxies.append(ProcessSpec(f"{dep.name}-proxy-1", "proxy", stop_timeout_s=130, env={
                **dep_env, "TIFFIN_REPLICA_ID": f"{dep.name}-api-1",
                "TIFFIN_UPSTREAM_URL": f"http://127.0.0.1:{api_port}"}))  # fmt: skip
            say(f"{dep.name:<11} runner ({engine}) on :{runner_port}, API server on :{api_port} with its proxy")
        await supervisor.start_stage(runners)
        await supervisor.start_stage(apis)
        await supervisor.start_stage(proxies)
        await supervisor.start_stage([ProcessSpec("interceptor", "interceptor", stop_timeout_s=70, env={
            **common, "TIFFIN_HOST": args.host, "TIFFIN_PORT": str(args.port),
            "TIFFIN_ADMIN_PORT": str(args.admin_port)})])  # fmt: skip
        endpoint = f"http://{args.host}:{args.port}/v1"
        say(f"interceptor {endpoint} (admin http://{args.host}:{args.admin_port}/metrics)")
        say(f"logs        {log_dir}/")
        if await _wait_ready(deployments, redis_url, stop):
            for dep in deployments:
                prefix = "" if dep.routing.path_prefix == "/" else dep.routing.path_prefix
                say(f"ready: {dep.name} at http://{args.host}:{args.port}{prefix}/v1 (model '{dep.model_name}')")
            first = deployments[0]
            say(
                f"try:   curl {endpoint}/chat/completions -H 'content-type: application/json' -d "
                f"""'{{"model": "{first.model_name}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'"""
            )
            say("Ctrl-C stops everything")
        await stop.wait()
        say("stopping: interceptor (drains in-flight requests), proxies, API servers, runners, redis")
        return 0
    finally:
        await supervisor.stop_all()
        if redis is not None:
            await asyncio.to_thread(redis.stop)
        say("stopped")


async def _wait_ready(deployments: list[Deployment], redis_url: str, stop: asyncio.Event) -> bool:
    """Wait until every deployment has a ready runner and API server, showing progress."""
    from tiffin.redis_conn import connect
    from tiffin.registry import Registry

    client = connect(redis_url)
    started = time.monotonic()
    last_note = started
    pending = {d.name for d in deployments}
    try:
        while pending and not stop.is_set():
            for name in sorted(pending):
                runner = await Registry(client, name, "runner").ready()
                api = await Registry(client, name, "api").ready()
                if runner and api:
                    pending.discard(name)
                    say(f"{name}: runner and API server ready after {time.monotonic() - started:.0f}s")
            if pending and time.monotonic() - last_note >= 10:
                last_note = time.monotonic()
                say(f"waiting for {', '.join(sorted(pending))}: the engine is loading the model "
                    f"({time.monotonic() - started:.0f}s)")  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        await client.aclose()
    return not pending
