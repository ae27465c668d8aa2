"""`tiffin up`: Redis, the scaler, the interceptor and the local autoscaler, in the foreground.

Replicas are not started here: the autoscaler starts them (at once for `min_replicas`, on the first request
for deployments at zero) and is the only one that does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import secrets
import signal
import time
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from tiffin.apps.openapi import publish_all
from tiffin.common.addresses import is_loopback, url_host
from tiffin.common.models import default_cache_dir, resolve_model
from tiffin.common.probe import wait_until_ok
from tiffin.common.redact import safe_url
from tiffin.common.redis_conn import connect
from tiffin.contracts.apikeys import ensure_first_keys
from tiffin.contracts.config import Deployment
from tiffin.contracts.registry import Registry
from tiffin.local.autoscaler import Autoscaler
from tiffin.local.logfiles import LogPolicy
from tiffin.local.pool import RunnerPool, enabled_by_env
from tiffin.local.ports import free_port, port_free
from tiffin.local.processes import ProcessSpec, Supervisor
from tiffin.local.redis_process import RedisProcess
from tiffin.local.redis_server import EmbeddedRedis, redis_data_dir
from tiffin.local.replicas import LocalReplicas
from tiffin.local.scaler_client import ScalerClient
from tiffin.tls.edge import EdgeTLS, keep_local_tls_fresh, plan_edge_tls

_SCALER_READY_S = 60.0


def say(message: str) -> None:
    # A closed terminal makes writes fail; stopping in order matters more than the words.
    with contextlib.suppress(OSError):
        print(f"tiffin: {message}", flush=True)


def _say_for(name: str, message: str) -> None:
    say(f"{name}: {message}")


def admin_token_file(state_dir: Path) -> Path:
    """The admin listener's token, made once (owner-only) and kept in the state folder."""
    path = state_dir / "admin-token"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
    return path


async def up(args: argparse.Namespace, deployments: list[Deployment]) -> int:
    """Prepare models, start Redis, the scaler, the interceptor and the autoscaler; run until a signal."""
    for host, port in ((args.host, args.port), (args.admin_host, args.admin_port)):
        if not port_free(host, port):
            say(f"port {port} on {host} is in use (another tiffin up?); pick another with --port / --admin-port")
            return 1
    # Everything tiffin and its children write (logs, Redis's append-only file with prompts and answers, keys,
    # certificates) is for this user's eyes only.
    os.umask(0o077)
    state_dir: Path = args.state_dir.resolve()
    # Before anything is made: certificate files of one's own that cannot be used stop the start here.
    tls = await asyncio.to_thread(plan_edge_tls, args.tls_cert, args.tls_key, args.plain_http, state_dir, args.host)
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for folder in (state_dir, log_dir):
        folder.chmod(0o700)  # made by an earlier version, or by hand, with looser modes
    log_policy = LogPolicy.from_env()
    cache_dir: Path = (args.cache_dir or default_cache_dir()).resolve()

    for dep in deployments:
        progress = functools.partial(_say_for, dep.name)
        model = await asyncio.to_thread(resolve_model, dep.model, cache_dir, progress)
        say(f"{dep.name}: model {model.path}")

    redis: RedisProcess | None = None
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        say(f"redis       external, {safe_url(redis_url)}")
    else:
        embedded = EmbeddedRedis(redis_data_dir(state_dir), log_to_stdout=True)
        redis = RedisProcess(embedded, log_dir, say, log_policy)
        await redis.start()
        redis_url = embedded.url
        say(f"redis       embedded, {embedded.shown_url} (data and password: {embedded.data_dir}, owner-only; "
            "restarted if it dies)")  # fmt: skip

    config_env = os.pathsep.join(str(p.resolve()) for p in args.configs)
    common = {"TIFFIN_CONFIG": config_env, "REDIS_URL": redis_url, "TIFFIN_CACHE_DIR": str(cache_dir)}
    core, edge = Supervisor(log_dir, say, log_policy), Supervisor(log_dir, say, log_policy)
    pool = _runner_pool(args, deployments, state_dir, common, log_dir, log_policy)
    replicas = LocalReplicas(log_dir, common, say, log_policy, runner_pool=pool)
    client = connect(redis_url)
    stop, scaling_stop = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    # A closed terminal (SIGHUP) stops in order too; if anything ends tiffin up without that, its children
    # still go (tiffin.common.parentdeath).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    scaler_port = free_port()
    scaler = ScalerClient(f"127.0.0.1:{scaler_port}")
    autoscaling: asyncio.Task[None] | None = None
    pool_report: asyncio.Task[None] | None = None
    renewing: asyncio.Task[None] | None = None
    try:
        # Before the interceptor starts, so it loads the new keys with the rest.
        new_keys = await _api_keys(client, deployments, args)
        await publish_all(client, deployments)  # applications' docs pages work before their first request
        if pool is not None:
            # First: its imports take seconds of CPU, done while the rest starts and before any request.
            await pool.start()
            pool_report = asyncio.create_task(pool.report(client, scaling_stop), name="runner-pool-report")
            say(f"runner pool imports vLLM once; runners start from it by fork (log: {log_dir}/runner-pool.log; "
                "--no-runner-pool turns it off)")  # fmt: skip
        await core.start_stage([ProcessSpec("scaler", "scaler", {**common, "TIFFIN_SCALER_PORT": str(scaler_port)})])
        if not await _wait_scaler(scaler, stop):
            say(f"the scaler did not become ready; see {log_dir}/scaler.log")
            return 1
        say(f"scaler      grpc://127.0.0.1:{scaler_port} (KEDA external scaler protocol)")
        admin_env = {"TIFFIN_ADMIN_HOST": args.admin_host, "TIFFIN_ADMIN_PORT": str(args.admin_port)}
        token_file = None if is_loopback(args.admin_host) else admin_token_file(state_dir)
        if token_file is not None:
            admin_env["TIFFIN_ADMIN_TOKEN_FILE"] = str(token_file)
        await edge.start_stage([ProcessSpec("interceptor", "interceptor", stop_timeout_s=70, env={
            **common, "TIFFIN_HOST": args.host, "TIFFIN_PORT": str(args.port), **admin_env, **tls.env})])  # fmt: skip
        base = f"{tls.scheme}://{url_host(args.host)}:{args.port}"
        endpoint = f"{base}/v1"
        admin = f"http://{url_host(args.admin_host)}:{args.admin_port}"
        if not await _wait_http(f"{admin}/readyz", stop):
            say(f"the interceptor did not become ready; see {log_dir}/interceptor.log")
            return 1
        say(f"interceptor {endpoint} (admin {admin}/api/status, {admin}/metrics)")
        say(f"dashboard   {admin}/dashboard (live: state, replicas, queue and cold starts of every deployment)")
        if token_file is not None:
            say(f"admin       on {args.admin_host}: every path but /healthz and /readyz needs "
                f"'Authorization: Bearer' with the token in {token_file} (the dashboard asks for it)")  # fmt: skip
        _say_tls(tls, base, args.host, args.port)
        if tls.ca_file is not None:  # the local CA's certificate: kept fresh for as long as tiffin up runs
            renewing = asyncio.create_task(keep_local_tls_fresh(state_dir, args.host, scaling_stop, say))
        say(f"logs        {log_dir}/")
        autoscaler = Autoscaler(scaler, deployments, replicas, client, say)
        autoscaling = asyncio.create_task(autoscaler.run(scaling_stop), name="autoscaler")
        for dep in deployments:
            api, runner = dep.api, dep.runner
            say(f"{dep.name:<11} api {api.min_replicas}..{api.max_replicas} replicas (target {api.scale_target:g} "
                f"requests each), runner {runner.min_replicas}..{runner.max_replicas} "
                f"(target {runner.scale_target:g}), to zero after {dep.scaling.idle_period_s:g}s idle")  # fmt: skip
        warm = [d for d in deployments if d.api.min_replicas > 0 and d.runner.min_replicas > 0]
        if await _wait_ready(warm, redis_url, stop):
            for dep in deployments:
                prefix = "" if dep.routing.path_prefix == "/" else dep.routing.path_prefix
                how = "warm" if dep in warm else "at zero: the first request wakes it and waits for the cold start"
                say(f"ready: {dep.name} at {base}{prefix}/v1 (model '{dep.model_name}', {how})")
                if dep.app is not None:
                    apps = f"{base}{prefix}/v1/apps/{dep.name}"
                    say(f"app:   {dep.name} ({dep.app.entry}) endpoints at {apps}/ENDPOINT, docs page {apps}/docs")
            first = deployments[0]
            auth = ""
            if first.auth.require_api_key:
                # Double quotes: a shell expands $TIFFIN_API_KEY in them (later runs cannot show the key).
                auth = f'-H "Authorization: Bearer {new_keys.get(first.name, "$TIFFIN_API_KEY")}" '
            say(
                f"try:   curl {tls.curl_flag()}{endpoint}/chat/completions {auth}"
                "-H 'content-type: application/json' -d "
                f"""'{{"model": "{first.model_name}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'"""
            )
            token_arg = f" --token-file {token_file}" if token_file is not None else ""
            say(f"watch: {admin}/dashboard in a browser, or tiffin status --admin {admin}{token_arg}")
            say("Ctrl-C stops everything")
        await stop.wait()
        say("stopping: interceptor (drains in-flight requests), replicas, scaler, redis")
        return 0
    finally:
        await edge.stop_all()
        scaling_stop.set()  # after the edge drained: its last requests still had their replicas
        if autoscaling is not None:
            await autoscaling
        await replicas.stop_all()
        if pool_report is not None:
            await pool_report
        if renewing is not None:
            await renewing
        if pool is not None:
            await pool.stop()
        await core.stop_all()
        await scaler.close()
        await client.aclose()
        if redis is not None:
            await redis.stop()
        say("stopped")


def _runner_pool(args: argparse.Namespace, deployments: list[Deployment], state_dir: Path, env: dict[str, str],
                 log_dir: Path, log_policy: LogPolicy) -> RunnerPool | None:  # fmt: skip
    """The runner pool, where it pays: on unless turned off, and only for deployments that run vLLM itself."""
    if getattr(args, "no_runner_pool", False) or not enabled_by_env():
        return None
    if all(dep.runner.command for dep in deployments):
        return None  # custom engines: nothing of theirs to import ahead
    # A Unix socket's path is limited to ~107 bytes: a deep state folder would not fit.
    path = state_dir / "runner-pool.sock"
    if len(str(path)) > 100:
        path = Path("/tmp") / f"tiffin-pool-{os.getpid()}.sock"
    return RunnerPool(path, env, log_dir, say, log_policy)


def _say_tls(tls: EdgeTLS, base: str, host: str, port: int) -> None:
    """How the endpoint is secured and how a client trusts it (or the warning that it is not)."""
    for note in tls.notes:
        say(note.replace("{url}", base))
    named = [n for n in tls.names if "*" not in n]
    if tls.names and url_host(host).strip("[]") not in tls.names and named:
        example = f"https://{url_host(named[0])}:{port}/v1"
        say(f"            clients connect by a name the certificate covers, e.g. {example}")


async def _api_keys(client: Redis, deployments: list[Deployment], args: argparse.Namespace) -> dict[str, str]:
    """Make and show a first key for each deployment that needs one and has none; say how to get more.

    A new key is printed here, once: only its hash is stored, so no later run can show it again.
    """
    made, counts = await ensure_first_keys(client, deployments)
    state = f" --state-dir {args.state_dir}" if args.state_dir != Path(".state") else ""
    for dep in deployments:
        if not dep.auth.require_api_key:
            say(f"WARNING: {dep.name} is open (auth.require_api_key: false): anyone who can reach "
                f"{args.host}:{args.port} can use it")  # fmt: skip
        elif dep.name in made:
            say(f"{dep.name}: API key (shown only now; tiffin keeps just its hash, so store it): {made[dep.name]}")
        else:
            say(f"{dep.name}: {counts[dep.name]} API key(s) exist; `tiffin keys create {dep.name}{state}` makes "
                f"another, `tiffin keys list{state}` lists them")  # fmt: skip
    return made


async def _wait_http(url: str, stop: asyncio.Event, timeout_s: float = 60.0) -> bool:
    """Poll `url` until it answers 200 (a process's readiness endpoint is its only signal)."""
    async with aiohttp.ClientSession() as session:
        return await wait_until_ok(session, url, stop, timeout_s)


async def _wait_scaler(scaler: ScalerClient, stop: asyncio.Event) -> bool:
    deadline = time.monotonic() + _SCALER_READY_S
    while time.monotonic() < deadline and not stop.is_set():
        if await scaler.serving():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
    return False


async def _wait_ready(deployments: list[Deployment], redis_url: str, stop: asyncio.Event) -> bool:
    """Wait until every deployment kept warm has a ready runner and API server, showing progress."""
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
