"""Scale to zero and back with `tiffin up`: the autoscaler, the scaler and real replica processes.

Runners run the test upstream (`runner.command`), so every tiffin process is the real one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.conftest import processes_of, status, wait_until, write_deployment
from tests.e2e.up import Up
from tests.procs import ROOT

SCALED = {
    "api": {"concurrency": 4, "max_replicas": 3},
    "runner": {"concurrency": 4, "max_replicas": 2},
    "scaling": {"idle_period_s": 3, "scale_down_window_s": 2},
    "limits": {"wait_timeout_s": 120, "upstream_timeout_s": 60, "max_queue": 200},
}


class Sampler(threading.Thread):
    """Records the highest replica counts and process counts seen while a test runs."""

    def __init__(self, up: Up, folder: Path) -> None:
        super().__init__(daemon=True)
        self.up, self.folder = up, folder
        self.done = threading.Event()
        self.peak: dict[str, int] = {}

    def _max(self, key: str, value: int | None) -> None:
        self.peak[key] = max(self.peak.get(key, 0), value or 0)

    def run(self) -> None:
        while not self.done.wait(0.2):  # sampling period, not synchronisation
            for name, dep in status(self.up).items():
                for component in ("api", "runner"):
                    self._max(f"{name}.{component}.desired", dep[component]["desired"])
                    self._max(f"{name}.{component}.ready", dep[component]["ready"])
            self._max("bystander.processes", processes_of(self.folder, "bystander"))


def scaled_to(out: str, who: str) -> list[int]:
    """Every replica count `tiffin up` printed it scaled `who` ('burst api') to."""
    return [int(n) for n in re.findall(rf"{who}: \d+ -> (\d+) replicas", out)]


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    # One key sends the whole burst: its per-key limits are lifted, as an operator would for a batch client.
    unlimited = {"require_api_key": True, "per_key": {"requests_per_second": None, "concurrency": None}}
    configs = [write_deployment(tmp_path, "burst", **SCALED, auth=unlimited),
               write_deployment(tmp_path, "bystander", **SCALED, auth=unlimited)]  # fmt: skip
    running = Up(configs, tmp_path / "state")
    try:
        running.wait_for_line("ready: bystander", timeout_s=120)
        yield running
    finally:
        assert running.proc.stop(timeout_s=180) == 0


async def burst(
    url: str, key: str, n: int, delay_s: float, tls: ssl.SSLContext
) -> list[tuple[int, str, str, str | None]]:
    """n concurrent chat requests; each answer's status, text, request id and cold-start header."""

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[int, str, str, str | None]:
        body = {"model": "burst", "messages": [{"role": "user", "content": f"m{i}"}],
                "tiffin_test": {"delay_s": delay_s}}  # fmt: skip
        async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
            data = await resp.json()
            text = data["choices"][0]["message"]["content"] if resp.status == 200 else json.dumps(data)
            return resp.status, text, resp.headers["X-Request-Id"], resp.headers.get("x-tiffin-cold-start-ms")

    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0, ssl=tls),
                                     headers={"Authorization": f"Bearer {key}"}) as session:  # fmt: skip
        return await asyncio.gather(*(one(session, i) for i in range(n)))


def test_burst_from_zero_scales_each_component_to_its_target_and_back_to_zero(up: Up, tmp_path: Path) -> None:
    # At rest: nothing of either deployment runs.
    assert processes_of(tmp_path, "burst") == 0
    assert processes_of(tmp_path, "bystander") == 0
    assert {name: d["state"] for name, d in status(up).items()} == {"burst": "idle", "bystander": "idle"}

    sampler = Sampler(up, tmp_path)
    sampler.start()
    try:
        answers = asyncio.run(burst(up.url, up.api_key("burst"), 100, delay_s=1.0, tls=up.ssl_context()))
    finally:
        sampler.done.set()
        sampler.join()

    # Every request answered once, with its own answer.
    assert [a[0] for a in answers] == [200] * 100
    assert [a[1] for a in answers] == [f"echo: m{i}" for i in range(100)]
    assert len({a[2] for a in answers}) == 100
    assert all(a[3] is not None and int(a[3]) > 0 for a in answers)  # all arrived at zero: each waited, and says so
    # API servers by queue depth (100 / 4 per replica, capped at 3); runners by their own load: 3 API servers
    # x 4 requests waiting or running at runners = 12, / 4 per runner, capped at 2. Counts wanted, as the
    # autoscaler decided them (its printed decisions): how many were ready at one moment depends on how fast
    # replicas start on a busy machine, so it is not asserted.
    out = up.proc.log()
    assert max(scaled_to(out, "burst api")) == 3
    assert max(scaled_to(out, "burst runner")) == 2
    # The other deployment was never woken.
    assert sampler.peak["bystander.api.desired"] == 0
    assert sampler.peak["bystander.runner.desired"] == 0
    assert sampler.peak["bystander.processes"] == 0
    assert "bystander api:" not in out and "bystander runner:" not in out  # no scaling decision for it at all

    # Back to zero after the idle period: no process of the deployment is left.
    wait_until("burst back at zero processes", lambda: processes_of(tmp_path, "burst") == 0, timeout_s=120)
    final = status(up)["burst"]
    assert final["state"] == "idle"
    assert (final["api"]["desired"], final["runner"]["desired"]) == (0, 0)
    assert final["last_cold_start_s"] is not None and final["last_cold_start_s"] > 0
    out = up.proc.log()
    # Woken by activation (to 1, or straight to more when the whole burst already waits by then).
    assert re.search(r"burst api: 0 -> [123] replicas \(activation", out)
    assert re.search(r"burst runner: 0 -> [12] replicas \(activation", out)
    assert re.search(r"burst runner: ready after \d+s \(cold start\)", out)
    assert re.search(r"burst api: \d -> 0 replicas \(idle", out)
    assert re.search(r"burst runner: \d -> 0 replicas \(idle", out)


def test_status_cli_shows_the_table_and_the_json(up: Up) -> None:
    admin = f"http://127.0.0.1:{up.admin_port}"
    table = subprocess.run([sys.executable, "-m", "tiffin", "status", "--admin", admin],
                           capture_output=True, text=True, cwd=ROOT, timeout=60, check=True).stdout  # fmt: skip
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:-1]}
    assert rows["burst"][:6] == ["burst", "idle", "0/0", "0/0", "0", "0"]
    raw = subprocess.run([sys.executable, "-m", "tiffin", "status", "--admin", admin, "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60, check=True).stdout  # fmt: skip
    names = [d["name"] for d in json.loads(raw)["deployments"]]
    assert names == ["burst", "bystander"]


def test_status_cli_without_a_running_tiffin_says_what_to_do() -> None:
    result = subprocess.run([sys.executable, "-m", "tiffin", "status", "--admin", "http://127.0.0.1:9"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert result.returncode == 1
    assert "is `tiffin up` running?" in result.stderr


def runner_pids(config_dir: Path, deployment: str) -> list[int]:
    """Pids of the runner supervisors (`python -m runtime.runner`) of `deployment` in this test's config."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes()
        except OSError:
            continue
        if b"runtime.runner" in cmdline and f"TIFFIN_DEPLOYMENT={deployment}\0".encode() in env \
                and str(config_dir).encode() in env:  # fmt: skip
            pids.append(int(proc.name))
    return pids


def test_min_replicas_start_warm_and_a_crashed_replica_is_replaced(tmp_path: Path) -> None:
    kept = {"api": {"min_replicas": 1}, "runner": {"min_replicas": 1}, "scaling": {"idle_period_s": 1}}
    up = Up([write_deployment(tmp_path, "kept", require_api_key=True, **kept)], tmp_path / "state")
    try:
        up.wait_for_line("ready: kept", timeout_s=120)
        assert "(model 'kept', warm)" in up.proc.log()
        assert status(up)["kept"]["state"] == "warm"
        [pid] = runner_pids(tmp_path, "kept")

        os.kill(pid, signal.SIGKILL)
        wait_until("a new runner process", lambda: runner_pids(tmp_path, "kept") not in ([], [pid]), timeout_s=60)
        wait_until("kept warm again", lambda: status(up)["kept"]["state"] == "warm", timeout_s=60)
        body = {"model": "kept", "messages": [{"role": "user", "content": "still here"}]}
        request = urllib.request.Request(f"{up.url}/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json",
                                                  "Authorization": f"Bearer {up.api_key('kept')}"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=60, context=up.ssl_context()) as resp:
            assert json.load(resp)["choices"][0]["message"]["content"] == "echo: still here"
        assert "kept-runner-1 exited with code -9; restarting" in up.proc.log()
        # Past its idle period it stays at min_replicas: still one of each.
        assert status(up)["kept"]["runner"]["desired"] == 1
    finally:
        assert up.proc.stop(timeout_s=180) == 0
