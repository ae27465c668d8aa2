"""The local autoscaler: KEDA's and the HPA's part on one machine, over KEDA's external scaler protocol.

Per deployment and component: 0 -> 1 when the scaler's StreamIsActive says active (pushed, not polled),
1 -> N by `ceil(metric / target)` clamped to `[max(1, min_replicas), max_replicas]`, down only to the highest
count wanted within `scaling.scale_down_window_s` (the HPA's stabilisation window), and to `min_replicas` as
soon as the scaler reports inactive (the scaler already waited for the idle period). It is the single writer of
replica counts: nothing else starts or stops replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from typing import Protocol

import grpc
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tiffin.contracts import coldstart, keys
from tiffin.contracts.config import Deployment
from tiffin.contracts.history import record_replicas
from tiffin.contracts.registry import Registry
from tiffin.contracts.status import write_desired
from tiffin.local.processes import Say
from tiffin.local.scaler_client import ScalerClient

log = structlog.get_logger("tiffin.local.autoscaler")

_RETRY_MAX_S = 10.0
# Replica counts go into the dashboard's history this often (and at once when the wanted count changes).
HISTORY_EVERY_S = 2.0


class Backend(Protocol):
    """What runs replicas: local processes here; a Kubernetes Deployment's scale subresource elsewhere."""

    async def scale(self, deployment: Deployment, component: keys.Component, replicas: int) -> None: ...


def desired_replicas(metric: float, target: float, min_replicas: int, max_replicas: int) -> int:
    """The HPA formula for an active scale target: ceil(metric / target) within [max(1, min), max]."""
    wanted = math.ceil(metric / target - 1e-9) if target > 0 else max_replicas
    return max(max(1, min_replicas), min(max_replicas, wanted))


class ComponentAutoscaler:
    """Scales one component of one deployment."""

    def __init__(
        self,
        client: ScalerClient,
        deployment: Deployment,
        component: keys.Component,
        backend: Backend,
        redis: Redis | None,
        say: Say,
        tick_s: float = 1.0,
    ) -> None:
        self.client = client
        self.deployment = deployment
        self.component: keys.Component = component
        self.spec = deployment.component(component)
        self.backend = backend
        self.redis = redis
        self.say = say
        self.tick_s = tick_s
        self.replicas = 0
        self.active = False
        self._streaming = False
        self._target: float | None = None
        self._nudge = asyncio.Event()
        self._history: deque[tuple[float, int]] = deque()
        self._progress: asyncio.Task[None] | None = None
        self._recorded: tuple[int, float] | None = None  # (replicas, monotonic time) last put in the history
        self._asleep_since: float | None = None

    @property
    def label(self) -> str:
        return f"{self.deployment.name} {self.component}"

    async def run(self, stop: asyncio.Event) -> None:
        """Scale until `stop` is set; leaves replicas as they are (stopping them is the caller's shutdown)."""
        watcher = asyncio.create_task(self._watch(stop), name=f"watch-{self.label}")
        await self._record(self.replicas)  # status shows 0 wanted (not unknown) for a deployment at rest
        try:
            while not stop.is_set():
                self._nudge.clear()
                await self.step()
                await self._record_history()
                waits = {asyncio.ensure_future(self._nudge.wait()), asyncio.ensure_future(stop.wait())}
                await asyncio.wait(waits, timeout=self.tick_s, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waits:
                    waiter.cancel()
        finally:
            for task in (watcher, self._progress):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _watch(self, stop: asyncio.Event) -> None:
        """Follow StreamIsActive; each message nudges the control loop at once (activation is pushed)."""
        backoff = 0.5
        while not stop.is_set():
            try:
                async for active in self.client.stream_active(self.deployment.name, self.component):
                    backoff = 0.5
                    self._streaming = True
                    self.active = active
                    self._nudge.set()
            except grpc.aio.AioRpcError as exc:
                log.warning("stream_failed", target=self.label, code=str(exc.code()), details=exc.details())
            self._streaming = False  # until it is back, the control loop asks IsActive on every tick
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, _RETRY_MAX_S)

    async def step(self) -> None:
        """One control decision: ask the scaler, apply the HPA rules, scale the backend if the count changes."""
        name, component = self.deployment.name, self.component
        try:
            if not self._streaming:
                self.active = await self.client.is_active(name, component)
            if self.active:
                if self._target is None:
                    self._target = await self.client.target(name, component)
                metric = await self.client.metric(name, component)
                wanted = desired_replicas(metric, self._target, self.spec.min_replicas, self.spec.max_replicas)
            else:
                metric, wanted = 0.0, self.spec.min_replicas
        except grpc.aio.AioRpcError as exc:
            # Keep the current count: scaling on a guess could drop replicas that are serving.
            log.warning("scaler_unavailable", target=self.label, code=str(exc.code()), details=exc.details())
            return
        now = time.monotonic()
        self._history.append((now, wanted))
        window = self.deployment.scaling.scale_down_window_s
        while self._history and self._history[0][0] < now - window:
            self._history.popleft()
        if self.active and wanted < self.replicas:
            wanted = max(w for _, w in self._history)  # no flapping: shed only what the window agrees on
        sleep_s = self.deployment.scaling.sleep_period_s
        if self.component == "runner" and sleep_s is not None:
            wanted = await self._sleeping_tier(wanted, sleep_s, now)
        if wanted != self.replicas:
            await self._apply(wanted, metric)

    async def _sleeping_tier(self, wanted: int, sleep_s: float, now: float) -> int:
        """GPU runners going to zero sleep first (same count, GPU memory freed) and go only after `sleep_s`.

        Runners follow keys.sleep (set: sleep; deleted: wake). A request while they sleep wakes them.
        """
        if self.active and self._asleep_since is not None:
            self._asleep_since = None
            await self._set_sleep(False)
            self.say(f"{self.label}: waking {self.replicas} sleeping replica(s) (a request is waiting)")
            return wanted
        if self.active or wanted > 0 or self.replicas == 0:
            return wanted
        if self._asleep_since is None:
            self._asleep_since = now
            await self._set_sleep(True)
            idle_s = self.deployment.scaling.idle_period_s
            self.say(f"{self.label}: {self.replicas} replica(s) asleep after {idle_s:g}s idle (GPU memory freed); "
                     f"to zero after {sleep_s:g}s more")  # fmt: skip
            return self.replicas
        if now - self._asleep_since < sleep_s:
            return self.replicas
        self._asleep_since = None
        await self._set_sleep(False)  # the next start is a cold one: no flag left to put it to sleep
        return wanted

    async def _set_sleep(self, asleep: bool) -> None:
        if self.redis is None:
            return
        try:
            if asleep:
                await self.redis.set(keys.sleep(self.deployment.name), "1")
            else:
                await self.redis.delete(keys.sleep(self.deployment.name))
        except RedisError as exc:
            log.warning("sleep_not_recorded", target=self.label, asleep=asleep, error=str(exc))

    async def _apply(self, wanted: int, metric: float) -> None:
        before = self.replicas
        if before == 0 and wanted > 0 and self.active:
            why = "activation: a request is waiting"
        elif not self.active:
            why = f"idle for {self.deployment.scaling.idle_period_s:g}s" if wanted < before else "min_replicas"
        else:
            why = f"load {metric:g} at target {self._target or 0:g} per replica"
        self.say(f"{self.label}: {before} -> {wanted} replicas ({why})")
        self.replicas = wanted
        await self._record(wanted)
        await self.backend.scale(self.deployment, self.component, wanted)
        if before == 0 and wanted > 0 and self.redis is not None:
            await coldstart.note(self.redis, self.deployment.name, "replica_started")
        if before == 0 and wanted > 0 and self.redis is not None and self._progress is None:
            self._progress = asyncio.create_task(self._show_cold_start(self.redis), name=f"progress-{self.label}")

    async def _show_cold_start(self, redis: Redis) -> None:
        """Say when the first replica is ready, and every 10 s until then (a model load takes a while)."""
        started = time.monotonic()
        registry = Registry(redis, self.deployment.name, self.component)
        noted = started
        try:
            while self.replicas > 0:
                if await registry.ready():
                    self.say(f"{self.label}: ready after {time.monotonic() - started:.0f}s (cold start)")
                    return
                if time.monotonic() - noted >= 10:
                    noted = time.monotonic()
                    what = "the engine is loading the model" if self.component == "runner" else "starting"
                    self.say(f"{self.label}: {what} ({noted - started:.0f}s)")
                await asyncio.sleep(0.5)  # polling the registry: readiness is another process's heartbeat
        except RedisError as exc:
            log.warning("progress_unavailable", target=self.label, error=str(exc))
        finally:
            self._progress = None

    async def _record_history(self) -> None:
        """Ready and wanted replicas into the dashboard's history (`tiffin.contracts.history`)."""
        if self.redis is None:
            return
        now = time.monotonic()
        if (
            self._recorded is not None
            and self._recorded[0] == self.replicas
            and now - self._recorded[1] < HISTORY_EVERY_S
        ):
            return
        self._recorded = (self.replicas, now)
        try:
            ready = await Registry(self.redis, self.deployment.name, self.component).count()
            await record_replicas(self.redis, self.deployment.name, self.component, ready, self.replicas)
        except RedisError as exc:
            log.warning("history_not_recorded", target=self.label, error=str(exc))

    async def _record(self, replicas: int) -> None:
        if self.redis is None:
            return
        try:
            await write_desired(self.redis, self.deployment.name, self.component, replicas)
        except RedisError as exc:
            log.warning("desired_not_recorded", target=self.label, error=str(exc))


class Autoscaler:
    """One `ComponentAutoscaler` per deployment and component, against one scaler."""

    def __init__(
        self,
        client: ScalerClient,
        deployments: list[Deployment],
        backend: Backend,
        redis: Redis | None,
        say: Say,
        tick_s: float = 1.0,
    ) -> None:
        self.scalers = [
            ComponentAutoscaler(client, dep, component, backend, redis, say, tick_s)
            for dep in deployments
            for component in keys.COMPONENTS
        ]

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(s.run(stop) for s in self.scalers))
