"""`tiffin status`: the admin port's `GET /api/dashboard` (what the dashboard page shows), as a table or as JSON."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tiffin.contracts.coldstart import ColdStart

DASHBOARD_PATH = "/api/dashboard"


def fetch_status(admin_url: str, timeout_s: float = 5.0, token: str | None = None) -> dict[str, Any]:
    """GET /api/dashboard from a running interceptor's admin listener (with its token, if it has one)."""
    request = urllib.request.Request(admin_url.rstrip("/") + DASHBOARD_PATH)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout_s) as resp:
        data: dict[str, Any] = json.load(resp)
    return data


def duration(seconds: float | None) -> str:
    """A duration with its unit, as the page writes it: 850ms, 12.5s, 4m 05s, 2h 03m; '-' when unknown."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return "now" if seconds < 0.1 else f"{duration(seconds)} ago"  # idle_s is 0 while requests wait or run


def _replicas(component: dict[str, Any]) -> str:
    desired = component.get("desired")
    shown = f"{component['ready']}/{'-' if desired is None else desired}"
    cluster = component.get("cluster_ready")
    return shown if cluster is None else f"{shown} k8s:{cluster}"  # on Kubernetes: the controller's count


def _cold(record: dict[str, Any] | None) -> str:
    if record is None:
        return "-"
    if record.get("outcome") == "failed" or record.get("total_ms") is None:
        return "failed"
    return duration(float(record["total_ms"]) / 1000)


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def render(data: dict[str, Any]) -> str:
    """One row per deployment (replica columns read ready/desired), then the totals the page shows."""
    header = ("DEPLOYMENT", "STATE", "API", "RUNNER", "QUEUED", "IN FLIGHT", "OLDEST WAIT", "LAST REQUEST",
              "LAST COLD START")  # fmt: skip
    rows = [header]
    for dep in data.get("deployments", []):
        rows.append((dep["name"], dep["state"], _replicas(dep["api"]), _replicas(dep["runner"]), str(dep["queued"]),
                     str(dep["in_flight"]), duration(dep["oldest_waiting_s"]), _ago(dep["idle_s"]),
                     _cold(dep.get("last_cold_start"))))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append("(API and RUNNER: ready/desired replicas; LAST REQUEST: since the last request arrived or finished)")
    deployments = data.get("deployments", [])
    if any(dep[c].get("cluster_ready") is not None for dep in deployments for c in ("api", "runner")):
        lines.append("(k8s: pods Kubernetes reports ready; ready above counts replicas registered with tiffin)")
    for dep in data.get("deployments", []):
        last = dep.get("last_cold_start")
        if last:  # each phase in seconds since the waking request arrived
            lines.append(f"{dep['name']}: last {ColdStart.from_json(last).describe()}")
    t = data.get("totals")
    if t:
        asleep = f"{t['sleeping']} sleeping, " if t.get("sleeping") else ""  # only GPU deployments ever sleep
        states = f"{t['idle']} idle, {asleep}{t['waking']} waking, {t['warm']} warm"
        lines.append(
            f"{_plural(t['deployments'], 'deployment')}: {states}; "
            f"{_plural(t['api_ready'], 'API server')} and {_plural(t['runner_ready'], 'runner')} ready "
            f"({t['gpu_runners_ready']} on GPUs); {t['queued']} queued, {t['in_flight']} in flight"
        )
    pool = data.get("runner_pool")
    if pool:
        mib = 2**20
        lines.append(f"runner pool: {pool['state']}, {pool['rss_bytes'] / mib:.0f} MiB resident "
                     f"({pool['pss_bytes'] / mib:.0f} MiB proportional), {pool['runners_started']} runner(s) "
                     f"started from it, {pool['plain_fallbacks']} plainly")  # fmt: skip
    return "\n".join(lines)


def show_status(admin_url: str, as_json: bool, token_file: Path | None = None) -> int:
    """Print the status; 1 with a hint when no tiffin answers at `admin_url`."""
    try:
        token = token_file.read_text().strip() if token_file else None
        data = fetch_status(admin_url, token=token)
    except urllib.error.HTTPError as exc:
        hint = " Pass the admin token with --token-file." if exc.code == 401 else ""
        print(f"tiffin: {admin_url} answered {exc.code} {exc.reason}.{hint}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"tiffin: no status from {admin_url} ({reason}); is `tiffin up` running? "
              "Pass its admin address with --admin.", file=sys.stderr)  # fmt: skip
        return 1
    print(json.dumps(data, indent=2) if as_json else render(data))
    return 0
