"""Whole-stack fixtures: real Redis, and every component as its own process on real sockets.

The runner here runs `tests/upstream.py`, a small OpenAI-compatible test upstream, through the deployment's
`runner.command`, so the runner supervisor, API server, proxy and interceptor are all the real ones.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.procs import ROOT, Proc
from tiffin.local.ports import free_port
from tiffin.local.redis_server import EmbeddedRedis

UPSTREAM = [sys.executable, str(ROOT / "tests" / "upstream.py"), "--port", "{port}",
            "--served-model-name", "{served_model_name}"]  # fmt: skip


def write_deployment(folder: Path, name: str, *, require_api_key: bool = False, **overrides: Any) -> Path:
    """A deployment YAML whose runner is the test upstream; `overrides` merge into the top level.

    Open (no API key) unless `require_api_key`: tests about something else need not carry keys.
    """
    model_dir = folder / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "config.json").write_text("{}")
    data: dict[str, Any] = {
        "name": name,
        "model": str(model_dir),
        "runner": {"command": UPSTREAM, "concurrency": 4},
        "api": {"concurrency": 4},
        "limits": {"wait_timeout_s": 30, "upstream_timeout_s": 30},
        "auth": {"require_api_key": require_api_key},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class Stack:
    """Handles to a running stack's processes and addresses."""

    redis_url: str
    config: str
    log_dir: Path
    port: int
    admin_port: int
    redis: EmbeddedRedis
    procs: dict[str, Proc] = field(default_factory=dict)
    runner_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        # Plain HTTP: these tests are about the request path; HTTPS is tested in test_https.py.
        return {"REDIS_URL": self.redis_url, "TIFFIN_CONFIG": self.config, "TIFFIN_HEARTBEAT_TTL_S": "2",
                "TIFFIN_RECLAIM_INTERVAL_S": "0.5", "TIFFIN_PLAIN_HTTP": "1", **extra}  # fmt: skip

    def start_interceptor(self, name: str = "interceptor", **extra: str) -> Proc:
        """An interceptor on the stack's ports, awaited until ready (a successor takes a new `name`)."""
        proc = Proc.module(name, "interceptor", self.env(
            TIFFIN_PORT=str(self.port), TIFFIN_ADMIN_PORT=str(self.admin_port), TIFFIN_DRAIN_TIMEOUT_S="5", **extra),
            self.log_dir)  # fmt: skip
        self.procs[name] = proc
        proc.wait_http(f"http://127.0.0.1:{self.admin_port}/readyz")
        return proc

    def _start_replica(self, module: str, port_var: str, deployment: str, name: str) -> tuple[Proc, int]:
        port = free_port()
        env = self.env(TIFFIN_DEPLOYMENT=deployment, TIFFIN_REPLICA_ID=name, **{port_var: str(port)})
        self.procs[name] = proc = Proc.module(name, module, env, self.log_dir)
        return proc, port

    def start_runner(self, deployment: str, name: str) -> tuple[Proc, int]:
        """A runner replica; it registers once its engine is ready (not awaited here)."""
        return self._start_replica("runtime.runner", "TIFFIN_RUNNER_PORT", deployment, name)

    def start_api(self, deployment: str, name: str) -> tuple[Proc, int]:
        """An API server replica, awaited until its /health answers."""
        proc, port = self._start_replica("runtime.api", "TIFFIN_API_PORT", deployment, name)
        proc.wait_http(f"http://127.0.0.1:{port}/health")
        return proc, port

    def start_proxy(self, deployment: str, replica_id: str, api_port: int, **extra: str) -> Proc:
        """The sidecar of the API-server replica `replica_id` (its process is named `{replica_id}-proxy`)."""
        name = f"{replica_id}-proxy"
        proc = Proc.module(
            name,
            "proxy",
            self.env(
                TIFFIN_DEPLOYMENT=deployment,
                TIFFIN_REPLICA_ID=replica_id,
                TIFFIN_UPSTREAM_URL=f"http://127.0.0.1:{api_port}",
                **{"TIFFIN_DRAIN_TIMEOUT_S": "5", **extra},  # `extra` may set another drain timeout
            ),
            self.log_dir,
        )
        self.procs[name] = proc
        return proc

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        self.redis.stop()


def make_stack(folder: Path, configs: list[Path]) -> Stack:
    """A stack with a Redis of its own, so tests that flush the shared one cannot disturb it."""
    log_dir = folder / "logs"
    log_dir.mkdir(exist_ok=True)
    redis = EmbeddedRedis(folder / "redis")
    redis.start()
    return Stack(redis_url=redis.url, config=":".join(str(c) for c in configs), log_dir=log_dir,
                 port=free_port(), admin_port=free_port(), redis=redis)  # fmt: skip


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """Parse an OpenAI SSE body into its JSON events (without the final [DONE])."""
    events = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: ") and block != "data: [DONE]":
            events.append(json.loads(block[len("data: ") :]))
    return events


def processes_of(config_dir: Path, deployment: str) -> int:
    """Live processes started for `deployment` of this test's config (replicas, sidecars, engines).

    A runner forked by the runner pool (and the engine it forks) keeps the pool's initial environment in
    /proc/PID/environ, without TIFFIN_DEPLOYMENT: those count as descendants of the pool (not the pool itself,
    which holds no deployment), so with the pool on, one deployment per config folder tells them apart.
    """
    marker, wanted = str(config_dir).encode(), f"TIFFIN_DEPLOYMENT={deployment}".encode()
    ours: dict[int, tuple[bool, int]] = {}  # pid -> (started for the deployment, parent pid)
    pools: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile, or not ours
        if stat[0] == "Z" or not any(e.startswith(b"TIFFIN_CONFIG=") and marker in e for e in env):
            continue
        if any(e.startswith(b"TIFFIN_RUNNER_POOL_SOCKET=") for e in env):
            pools.add(int(proc.name))
        ours[int(proc.name)] = (wanted in env, int(stat[1]))
    pooled = set()
    for pid in ours:
        parent = ours[pid][1]
        while parent in ours and parent not in pools:
            parent = ours[parent][1]
        if parent in pools:
            pooled.add(pid)
    return sum(1 for pid, (named, _) in ours.items() if named or pid in pooled)


def status(up: Any) -> dict[str, dict[str, Any]]:
    """`GET /api/status` of a running stack or `tiffin up` (anything with `admin_port`), by deployment."""
    with urllib.request.urlopen(f"http://127.0.0.1:{up.admin_port}/api/status", timeout=5) as resp:
        return {d["name"]: d for d in json.load(resp)["deployments"]}


def wait_until(what: str, check: Any, timeout_s: float) -> None:
    """Poll `check()` (state owned by other processes) until true, failing with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.2)  # observing other processes; no event to await


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Any]:
    """Build stacks inside a test; every process is stopped at the end."""
    stacks: list[Stack] = []

    def build(configs: list[Path]) -> Stack:
        stack = make_stack(tmp_path, configs)
        stacks.append(stack)
        return stack

    yield build
    for stack in stacks:
        stack.stop()
