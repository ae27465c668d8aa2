"""Driving `wrk` (a C load generator) from Python: one POST body, optional bearer key, results as a dict.

Python load generators top out at 1-2k requests per second on these machines, below what a one-hop proxy
serves, so the peers benchmark measures with wrk and reads its summary from a Lua `done()` hook.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_SCRIPT = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{auth}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\\nRESULT {{"requests":%d,"duration_us":%d,"p50_us":%.1f,"p99_us":%.1f,' ..
    '"socket_errors":%d,"status_errors":%d}}\\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run's summary: completed requests, wall time, latency percentiles and errors."""

    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    status_errors: int

    @property
    def rate(self) -> float:
        """Completed requests (or streams) per second."""
        return self.requests / self.duration_s if self.duration_s else 0.0


def wrk_binary() -> str:
    """wrk's path, or an error saying how to get it."""
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("bench: wrk is missing: install it (Debian: apt-get install -y wrk) and run again")
    return found


def write_script(folder: Path, name: str, body: dict[str, object], key: str = "") -> Path:
    """A wrk Lua script POSTing `body` (with a bearer `key` when given) that prints a RESULT line."""
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
    path = folder / f"{name}.lua"
    # A JSON string is a valid Lua string literal for the plain ASCII bodies used here.
    path.write_text(_SCRIPT.format(body=json.dumps(json.dumps(body)), auth=auth))
    return path


def run(url: str, script: Path, connections: int, duration_s: float, threads: int = 1) -> WrkResult:
    """Run wrk against `url` and parse its RESULT line."""
    command = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--timeout", "10s",
               "-s", str(script), url]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
    data = json.loads(line.removeprefix("RESULT "))
    return WrkResult(requests=data["requests"], duration_s=data["duration_us"] / 1e6, p50_ms=data["p50_us"] / 1000,
                     p99_ms=data["p99_us"] / 1000, socket_errors=data["socket_errors"],
                     status_errors=data["status_errors"])  # fmt: skip
