"""The runner's life: resolve the model, start the engine, wait for health, warm up, register, monitor, drain, stop.

Exit codes: 0 after SIGTERM/SIGINT, 1 when the engine failed (so the orchestrator replaces the replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiohttp
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from runtime.config import RunnerSettings
from runtime.runner import sleep
from runtime.runner.engine import engine_command, engine_env, has_gpu
from runtime.runner.forked import ForkedEngine
from tiffin.common.models import resolve_model
from tiffin.common.parentdeath import with_parent_death
from tiffin.common.redis_conn import connect
from tiffin.contracts.exceptions import ModelError
from tiffin.contracts.load import RunnerLoad
from tiffin.contracts.registry import Registry

log = structlog.get_logger("runtime.runner")

T = TypeVar("T")

LOADING_LOG_EVERY_S = 10.0
HEALTH_POLL_S = 0.5  # while loading: the engine gives no readiness signal but its /health
MONITOR_EVERY_S = 5.0
MONITOR_FAILURES = 3
STOP_GRACE_S = 30.0
# API servers cache the registry for 0.5 s and report a new lease within ~0.1 s: one may still arrive meanwhile.
DRAIN_MIN_S = 1.5
DRAIN_POLL_S = 0.2
DRAIN_CHECK_TIMEOUT_S = 2.0
WARMUP_BODY_PROMPT = "Hello"


class Supervisor:
    """Keeps one engine process and this replica's registry entry in step."""

    def __init__(
        self, settings: RunnerSettings, redis: Redis | None = None, engine: ForkedEngine | None = None
    ) -> None:
        """`engine`: one already forked (by a runner started from the pool); without it, one is spawned."""
        self.settings = settings
        self.deployment = settings.deployment
        self.redis = redis or connect(settings.redis_url)
        self.stopping = asyncio.Event()
        self.hurry = asyncio.Event()  # a second signal: stop draining now
        self.proc: asyncio.subprocess.Process | ForkedEngine | None = engine
        self._exited: asyncio.Task[int] | None = None
        self._exit_logged = False
        self._load_unavailable_logged = False

    def request_stop(self) -> None:
        """First call: stop gracefully (drain); a second one cuts the drain short."""
        if self.stopping.is_set():
            self.hurry.set()
        self.stopping.set()

    async def run(self) -> int:
        """Run until stopped (0) or until the engine fails (1)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=self.deployment.limits.upstream_timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                return await self._run(http)
        finally:
            await self._stop_engine()
            await self.redis.aclose()
            log.info("runner_stopped")

    async def _run(self, http: aiohttp.ClientSession) -> int:
        started = time.monotonic()
        if self.proc is None and not await self._spawn_engine():
            return 0 if self.stopping.is_set() else 1
        assert self.proc is not None
        self._exited = asyncio.create_task(self.proc.wait(), name="engine-exit")
        log.info("engine_started", pid=self.proc.pid, forked=isinstance(self.proc, ForkedEngine))
        return await self._serve(http, started)

    async def _spawn_engine(self) -> bool:
        """Resolve the model and start the engine as a fresh process; False when it cannot start."""
        dep = self.deployment
        try:
            model = await asyncio.to_thread(
                resolve_model, dep.model, self.settings.cache_dir, lambda msg: log.info("model_progress", message=msg)
            )
        except ModelError as exc:
            log.error("model_unavailable", error=str(exc))
            return False
        if self.stopping.is_set():
            return False
        gpu = await asyncio.to_thread(has_gpu)
        argv = engine_command(dep, model.path, self.settings.host, self.settings.port, gpu)
        env = engine_env(dep, gpu, os.environ)
        log.info("engine_starting", command=argv, gpu=gpu, model=str(model.path))
        try:
            # Its own process group, so stopping it also stops the workers vLLM spawns. If this runner dies
            # without cleaning up (SIGKILL, or `tiffin up` gone), the engine gets SIGTERM, which vLLM answers by
            # stopping its own engine processes (SIGKILL would leave those behind).
            self.proc = await asyncio.create_subprocess_exec(
                *with_parent_death(argv, signal.SIGTERM), env=env, start_new_session=True
            )
        except OSError as exc:
            log.error("engine_spawn_failed", error=str(exc), command=argv)
            return False
        return True

    async def _serve(self, http: aiohttp.ClientSession, started: float) -> int:
        """Health, warm-up, registration, monitoring, and the drain when asked to stop."""
        dep = self.deployment
        if not await self._wait_healthy(http, started):
            return 0 if self.stopping.is_set() else 1
        if not await self._warm_up(http):
            return 0 if self.stopping.is_set() else 1
        if not await self._wait_for_redis():
            return 0 if self.stopping.is_set() else 1

        registry = Registry(self.redis, dep.name, "runner", self.settings.heartbeat_ttl_s)
        info = {"url": self.settings.url, "concurrency": dep.runner.concurrency, "started_at": time.time()}
        while True:
            async with registry.keep(self.settings.replica_id, info):
                log.info("runner_ready", load_s=round(time.monotonic() - started, 1), url=self.settings.url)
                reason = await self._monitor(http)
            log.info("runner_deregistered", reason=reason)
            if reason != "sleep":
                break
            if not await self._sleep_until_woken(http):
                return 0 if self.stopping.is_set() else 1
            started = time.monotonic()
        if reason != "stop":
            return 1
        await self._drain()
        return 0

    async def _sleep_until_woken(self, http: aiohttp.ClientSession) -> bool:
        """Out of the registry: finish in-flight work, sleep the engine, wake it when asked; False if stopped."""
        await self._drain()
        if self.stopping.is_set() or not await sleep.engine_call(http, self.settings.local_url, sleep.sleep_path()):
            return False
        log.info("runner_asleep")
        while await sleep.sleep_wanted(self.redis, self.deployment.name, current=True):
            await self._pause(sleep.WAKE_POLL_S)
            if self.stopping.is_set() or self._engine_gone():
                return False
        woke = await sleep.engine_call(http, self.settings.local_url, sleep.WAKE_PATH)
        log.info("runner_awake", ok=woke)
        return woke

    def _engine_gone(self) -> bool:
        if self._exited is None or not self._exited.done():
            return False
        if not self._exit_logged:
            self._exit_logged = True
            log.error("engine_exited", exit_code=self._exited.result())
        return True

    async def _pause(self, seconds: float, until: asyncio.Event | None = None) -> None:
        """Wait `seconds`, returning early if the engine exits or `until` (default: a stop request) is set."""
        await self._race(asyncio.sleep(seconds), until)

    async def _race(self, work: Awaitable[T], until: asyncio.Event | None = None) -> T | None:
        """Run `work` unless the engine exits or `until` (default: a stop request) is set first.

        Then `work` is cancelled and the result is None.
        """
        task = asyncio.ensure_future(work)
        stop = asyncio.create_task((until or self.stopping).wait())
        watch: set[asyncio.Future[Any]] = {task, stop}
        if self._exited is not None:
            watch.add(self._exited)
        try:
            await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return task.result() if task.done() and not task.cancelled() else None

    async def _healthy(self, http: aiohttp.ClientSession) -> bool:
        try:
            async with http.get(f"{self.settings.local_url}/health", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _wait_healthy(self, http: aiohttp.ClientSession, started: float) -> bool:
        deadline = started + self.deployment.runner.startup_timeout_s
        next_log = time.monotonic() + LOADING_LOG_EVERY_S
        while not self.stopping.is_set() and not self._engine_gone():
            if await self._race(self._healthy(http)):
                return True
            now = time.monotonic()
            if now >= deadline:
                log.error("engine_start_timeout", timeout_s=self.deployment.runner.startup_timeout_s)
                return False
            if now >= next_log:
                log.info("engine_loading", seconds=round(now - started))
                next_log = now + LOADING_LOG_EVERY_S
            await self._pause(HEALTH_POLL_S)
        return False

    async def _warm_up(self, http: aiohttp.ClientSession) -> bool:
        """One short generation: the CPU backend answers /health, then dies on the first request it cannot run."""
        body = {"model": self.deployment.model_name, "prompt": WARMUP_BODY_PROMPT, "max_tokens": 1}

        async def post() -> tuple[int, str]:
            async with http.post(f"{self.settings.local_url}/v1/completions", json=body) as resp:
                return resp.status, (await resp.text())[:500]

        try:
            result = await self._race(post())
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._engine_gone()
            log.error("warmup_failed", error=str(exc) or type(exc).__name__)
            return False
        if result is None:
            self._engine_gone()
            return False
        status, text = result
        if status != 200:
            log.error("warmup_failed", status=status, body=text)
            return False
        return True

    async def _wait_for_redis(self) -> bool:
        """Registering needs Redis; a blip now should not throw away a loaded model."""
        while not self.stopping.is_set() and not self._engine_gone():
            try:
                await self.redis.ping()
                return True
            except (RedisError, OSError) as exc:
                log.warning("redis_unavailable", error=str(exc))
            await self._pause(2.0)
        return False

    async def _monitor(self, http: aiohttp.ClientSession) -> str:
        failures = 0
        while True:
            await self._pause(MONITOR_EVERY_S)
            if self.stopping.is_set():
                return "stop"
            if self._engine_gone():
                return "engine_exited"
            if self.deployment.scaling.sleep_period_s is not None and await sleep.sleep_wanted(
                self.redis, self.deployment.name, current=False
            ):
                return "sleep"
            healthy = await self._race(self._healthy(http))
            if healthy is None:
                continue  # stopped or exited meanwhile: the checks above decide, without waiting
            if healthy:
                failures = 0
                continue
            failures += 1
            log.warning("engine_unhealthy", failures=failures)
            if failures >= MONITOR_FAILURES:
                return "engine_unhealthy"

    async def _drain(self) -> None:
        """Out of the registry: let the engine finish what API servers still have in flight at it.

        Waits at least DRAIN_MIN_S, at most the drain timeout (also when Redis cannot say), and no longer once
        the engine exits or a second signal arrives.
        """
        load = RunnerLoad(self.redis, self.deployment.name)
        timeout_s = self.settings.drain_timeout_s
        started = time.monotonic()
        earliest, deadline = started + DRAIN_MIN_S, started + timeout_s
        in_flight = await self._in_flight(load, deadline)
        log.info("runner_draining", in_flight=in_flight, timeout_s=timeout_s)
        outcome = "timeout"
        while (now := time.monotonic()) < deadline:
            if in_flight == 0 and now >= earliest:
                outcome = "idle"
                break
            if self._engine_gone():
                outcome = "engine_exited"
                break
            if self.hurry.is_set():
                outcome = "signal"
                break
            await self._pause(min(DRAIN_POLL_S, deadline - now), until=self.hurry)
            in_flight = await self._in_flight(load, deadline)
        waited_s = round(time.monotonic() - started, 2)
        log.info("runner_drained", outcome=outcome, in_flight=in_flight, waited_s=waited_s)

    async def _in_flight(self, load: RunnerLoad, deadline: float) -> int | None:
        """Requests API servers report at this runner; None when Redis cannot tell in time."""
        timeout = max(0.05, min(DRAIN_CHECK_TIMEOUT_S, deadline - time.monotonic()))
        try:
            return await asyncio.wait_for(load.at_runner(self.settings.replica_id), timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            if not self._load_unavailable_logged:  # once: the check repeats every DRAIN_POLL_S
                self._load_unavailable_logged = True
                log.warning("drain_load_unavailable", error=str(exc) or type(exc).__name__)
            return None

    async def _stop_engine(self) -> None:
        """SIGTERM the engine's process group, SIGKILL it after the grace period."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            log.info("engine_stopping", pid=proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                log.warning("engine_killed", pid=proc.pid, grace_s=STOP_GRACE_S)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived their leader
        log.info("engine_stopped", exit_code=proc.returncode)
