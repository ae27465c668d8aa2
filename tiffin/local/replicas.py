"""The local process backend: replicas of each deployment's components as child processes.

An `api` replica is an API server plus its proxy sidecar; a `runner` replica is one runner. Only the autoscaler
calls `scale` (the single writer of replica counts); a replica that crashes is restarted by its
`ManagedProcess`, so the count holds.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from tiffin.contracts import keys
from tiffin.contracts.config import Deployment
from tiffin.local.logfiles import LogPolicy
from tiffin.local.ports import free_port
from tiffin.local.processes import Launcher, ManagedProcess, ProcessSpec, Say

# Long enough for the proxy to drain its in-flight requests and for a runner to drain its own.
_PROXY_STOP_S = 130.0
_RUNNER_STOP_S = 100.0  # TIFFIN_RUNNER_DRAIN_TIMEOUT_S (60) + the engine's stop grace (30) + margin


@dataclass
class Replica:
    """One replica's processes, started together and stopped front to back."""

    name: str
    procs: list[ManagedProcess] = field(default_factory=list)

    async def start(self) -> None:
        for proc in self.procs:
            await proc.start()

    async def stop(self) -> None:
        for proc in self.procs:  # the proxy (front) drains before its API server goes
            await proc.stop()


class LocalReplicas:
    """Starts and stops component replicas as local processes."""

    def __init__(
        self,
        log_dir: Path,
        common_env: dict[str, str],
        say: Say,
        log_policy: LogPolicy | None = None,
        runner_pool: Launcher | None = None,
    ) -> None:
        """`runner_pool`: starts vLLM runners by fork (tiffin.local.pool); a `runner.command` one starts plainly."""
        self.log_dir = log_dir
        self.runner_pool = runner_pool
        self.log_policy = log_policy
        self.common_env = common_env
        self.say = say
        self.run = secrets.token_hex(2)  # replica ids differ between runs sharing one Redis
        self._groups: dict[tuple[str, keys.Component], list[Replica]] = {}
        self._seq: dict[tuple[str, keys.Component], itertools.count[int]] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    def count(self, deployment: str, component: keys.Component) -> int:
        """Replicas started and not being stopped."""
        return len(self._groups.get((deployment, component), []))

    async def scale(self, deployment: Deployment, component: keys.Component, replicas: int) -> None:
        """Start or stop replicas until `replicas` run; stops drain in the background (newest first)."""
        group = self._groups.setdefault((deployment.name, component), [])
        seq = self._seq.setdefault((deployment.name, component), itertools.count(1))
        while len(group) < replicas:
            replica = self._replica(deployment, component, next(seq))
            group.append(replica)
            await replica.start()
        while len(group) > replicas:
            replica = group.pop()
            task = asyncio.create_task(replica.stop(), name=f"stop-{replica.name}")
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    def _replica(self, dep: Deployment, component: keys.Component, n: int) -> Replica:
        name = f"{dep.name}-{component}-{n}"
        env = {**self.common_env, "TIFFIN_DEPLOYMENT": dep.name, "TIFFIN_REPLICA_ID": f"{name}-{self.run}"}
        if component == "runner":
            pool = None if dep.runner.command else self.runner_pool
            spec = ProcessSpec(name, "runtime.runner", {**env, "TIFFIN_RUNNER_PORT": str(free_port())}, _RUNNER_STOP_S,
                               launcher=pool)  # fmt: skip
            return Replica(name, [self._managed(spec)])
        port = free_port()
        api = ProcessSpec(name, "runtime.api", {**env, "TIFFIN_API_PORT": str(port)})
        proxy = ProcessSpec(f"{dep.name}-proxy-{n}", "proxy", {**env, "TIFFIN_UPSTREAM_URL": f"http://127.0.0.1:{port}"},
                            _PROXY_STOP_S, fresh_replica_id=True)  # fmt: skip
        return Replica(name, [self._managed(proxy), self._managed(api)])

    def _managed(self, spec: ProcessSpec) -> ManagedProcess:
        return ManagedProcess(spec, self.log_dir, self.say, self.log_policy)

    async def stop_all(self) -> None:
        """Stop every replica: API servers (with their proxies) first, then runners."""
        for component in keys.COMPONENTS:
            replicas = [r for (_, c), group in self._groups.items() if c == component for r in group]
            await asyncio.gather(*(r.stop() for r in replicas))
        self._groups.clear()
        if self._stopping:
            await asyncio.gather(*self._stopping)
