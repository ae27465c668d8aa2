"""Zero to the first streamed token: `tiffin up` (runner pool on and off) against plain vLLM, side by side.

    .venv/bin/python bench/coldstart.py [--trials 3] [--pool both|on|off] [--json out.json]

The deployment is the README's default, examples/smollm2.yaml, with a short idle period (so each trial starts
from zero), no API key and plain HTTP (the key check and TLS cost microseconds: beside a cold start, noise).
Each trial:

- baseline: `python -m vllm.entrypoints.openai.api_server` started alone with the runner's own engine
  arguments and environment (runtime.runner.engine), polled until /health answers, then one streamed chat
  request: the time from the start to its first token is what a user gets without tiffin.
- tiffin: with the deployment at zero (no API server, no runner), the same streamed request through the
  interceptor: the time to its first token is the cold start. The phases in the `x-tiffin-cold-start-phases`
  response header are recorded when tiffin sends it.

Both run in the same trial, one after the other, on an otherwise idle tiffin: the ratio between them is
what this reports (timings on shared machines are noisy). JSON goes to stdout (or --json), a table to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.runner.engine import engine_command, engine_env  # noqa: E402
from tiffin.common.models import default_cache_dir, resolve_model  # noqa: E402
from tiffin.contracts.config import load_deployments  # noqa: E402
from tiffin.local.ports import free_port  # noqa: E402

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PHASES_HEADER = "x-tiffin-cold-start-phases"


def log(message: str) -> None:
    print(f"coldstart: {message}", file=sys.stderr, flush=True)


def first_token(url: str, model: str, timeout_s: float = 900, key: str = "") -> tuple[float, dict[str, str]]:
    """POST a streamed chat request (with `key` as bearer, if any); seconds until the first non-empty content
    delta, and the reply's headers."""
    body = json.dumps({"model": model, "messages": QUESTION, "max_tokens": 16, "temperature": 0, "stream": True})
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=body.encode(), headers=headers)
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=timeout_s) as resp:
        headers = {k.lower(): v for k, v in resp.headers.items()}
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                elapsed = time.monotonic() - started
                for _ in resp:  # read the rest: the request finishes as a client's would
                    pass
                return elapsed, headers
    raise RuntimeError("the stream ended without a token")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return bool(resp.status == 200)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            pass
        time.sleep(0.05)  # polling another process's state: there is no event to await
    raise TimeoutError(f"not within {timeout_s}s: {what}")


def baseline(config: Path, cache_dir: Path, work: Path) -> tuple[float, float]:
    """Plain vLLM with the runner's engine arguments: start to /health, then to the first streamed token."""
    [dep] = load_deployments([config])
    model = resolve_model(dep.model, cache_dir)
    port = free_port()
    argv = engine_command(dep, model.path, "127.0.0.1", port, gpu=False)
    env = engine_env(dep, False, os.environ)
    url = f"http://127.0.0.1:{port}"
    with (work / "baseline.log").open("ab") as out:
        started = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            until(lambda: http_ok(f"{url}/health"), 900, "plain vLLM's /health")
            health_s = time.monotonic() - started
            first_token(url, dep.model_name)
            return health_s, time.monotonic() - started
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class Tiffin:
    """`tiffin up` in the background with its own state folder and ports."""

    def __init__(self, config: Path, work: Path, cache_dir: Path, pool: bool) -> None:
        self.port, self.admin = free_port(), free_port()
        self.work = work
        state = work / ("state-pool" if pool else "state-plain")
        args = [sys.executable, "-m", "tiffin", "up", str(config), "--state-dir", str(state), "--plain-http",
                "--port", str(self.port), "--admin-port", str(self.admin), "--cache-dir", str(cache_dir)]  # fmt: skip
        if not pool:
            args.append("--no-runner-pool")
        self.log_path = work / f"tiffin-up-{'pool' if pool else 'plain'}.log"
        self.out = self.log_path.open("ab")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.out, stderr=subprocess.STDOUT)
        self.pool_log = state / "logs" / "runner-pool.log" if pool else None

    def printed(self, text: str) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"tiffin up exited; see {self.log_path}")
        return text in self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        data = get_json(f"http://127.0.0.1:{self.admin}/api/status")
        return {d["name"]: d for d in data["deployments"]}

    def at_zero(self, name: str) -> bool:
        dep = self.status()[name]
        return bool(dep["api"]["ready"] == 0 and dep["runner"]["ready"] == 0 and dep["state"] == "idle")

    def pool_memory(self) -> int | None:
        if self.pool_log is None:
            return None
        pid_line = [ln for ln in self.pool_log.read_text().splitlines() if "runner-pool: ready" in ln]
        if not pid_line:
            return None
        pid = int(pid_line[-1].rsplit("pid ", 1)[1].rstrip(")"))
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return None

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(240)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


def run_mode(pool: bool, config: Path, cache_dir: Path, work: Path, trials: int, name: str) -> dict[str, Any]:
    mode = "pool" if pool else "plain"
    log(f"{mode}: starting tiffin up")
    up = Tiffin(config, work, cache_dir, pool)
    results: list[dict[str, Any]] = []
    try:
        until(lambda: up.printed(f"ready: {name}"), 300, "tiffin up ready")
        if up.pool_log is not None:
            pool_log = up.pool_log
            until(lambda: "runner-pool: ready" in pool_log.read_text(), 300, "the runner pool imported vLLM")
        for trial in range(1, trials + 1):
            until(lambda: up.at_zero(name), 600, "the deployment back at zero")
            time.sleep(2.0)  # let the last runner's processes finish exiting: they share the 2 cores
            health_s, base_s = baseline(config, cache_dir, work)
            until(lambda: up.at_zero(name), 600, "the deployment still at zero")
            tiffin_s, headers = first_token(f"http://127.0.0.1:{up.port}", name)
            phases = headers.get(PHASES_HEADER)
            row = {"trial": trial, "mode": mode, "baseline_health_s": round(health_s, 2),
                   "baseline_s": round(base_s, 2), "tiffin_s": round(tiffin_s, 2),
                   "ratio": round(tiffin_s / base_s, 3), "cold_start_ms": headers.get("x-tiffin-cold-start-ms"),
                   "phases": _phases(phases)}  # fmt: skip
            log(f"{mode} trial {trial}: plain vLLM {base_s:.1f}s, tiffin {tiffin_s:.1f}s (x{tiffin_s / base_s:.2f})"
                + (f", phases {phases}" if phases else ""))  # fmt: skip
            results.append(row)
        memory = up.pool_memory()
    finally:
        up.stop()
    base = statistics.median(r["baseline_s"] for r in results)
    tif = statistics.median(r["tiffin_s"] for r in results)
    return {"mode": mode, "trials": results, "median_baseline_s": base, "median_tiffin_s": tif,
            "median_ratio": round(statistics.median(r["ratio"] for r in results), 3),
            "pool_rss_bytes": memory}  # fmt: skip


def _phases(header: str | None) -> Any:
    """`activated=40;replica_started=300` (ms since the request arrived) as a dict; another shape kept as sent."""
    if not header:
        return None
    try:
        return {name.strip(): float(ms) for name, ms in (part.split("=", 1) for part in header.split(";") if part)}
    except ValueError:
        return header


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--pool", choices=["both", "on", "off"], default="both")
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "smollm2.yaml")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the JSON here instead of stdout")
    args = parser.parse_args()
    cache_dir = (args.cache_dir or default_cache_dir()).resolve()
    example = yaml.safe_load(args.config.read_text())
    example["scaling"] = {"idle_period_s": 3, "scale_down_window_s": 0}
    example["auth"] = {"require_api_key": False}
    if not Path(str(example["model"])).is_absolute() and (args.config.parent / str(example["model"])).exists():
        example["model"] = str((args.config.parent / str(example["model"])).resolve())
    work = Path(tempfile.mkdtemp(prefix="tiffin-coldstart-"))
    config = work / args.config.name
    config.write_text(yaml.safe_dump(example))
    resolve_model(example["model"], cache_dir, lambda msg: log(msg))  # convert once, outside the timings
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    modes = {"both": [True, False], "on": [True], "off": [False]}[args.pool]
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit.stdout.strip(),
        "machine": f"{os.cpu_count()} cores, {_mem_gib()} GiB, {os.uname().machine}",
        "config": str(args.config),
        "modes": [run_mode(pool, config, cache_dir, work, args.trials, example["name"]) for pool in modes],
    }
    for mode in out["modes"]:
        log(f"{mode['mode']}: median plain vLLM {mode['median_baseline_s']:.1f}s, tiffin "
            f"{mode['median_tiffin_s']:.1f}s, median ratio x{mode['median_ratio']:.2f}")  # fmt: skip
    text = json.dumps(out, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _mem_gib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
