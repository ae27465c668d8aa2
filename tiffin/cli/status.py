"""`tiffin status`: the admin port's `GET /api/status`, as a table or as JSON."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def fetch_status(admin_url: str, timeout_s: float = 5.0, token: str | None = None) -> dict[str, Any]:
    """GET /api/status from a running interceptor's admin listener (with its token, if it has one)."""
    request = urllib.request.Request(admin_url.rstrip("/") + "/api/status")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout_s) as resp:
        data: dict[str, Any] = json.load(resp)
    return data


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _replicas(component: dict[str, Any]) -> str:
    desired = component.get("desired")
    return f"{component['ready']}/{'-' if desired is None else desired}"


def render(data: dict[str, Any]) -> str:
    """A table: one row per deployment; replica columns read ready/desired."""
    header = ("DEPLOYMENT", "STATE", "API", "RUNNER", "QUEUED", "IN FLIGHT", "OLDEST WAIT", "LAST COLD START")
    rows = [header]
    for dep in data.get("deployments", []):
        wait, cold = _seconds(dep["oldest_waiting_s"]), _seconds(dep["last_cold_start_s"])
        rows.append((dep["name"], dep["state"], _replicas(dep["api"]), _replicas(dep["runner"]), str(dep["queued"]),
                     str(dep["in_flight"]), wait, cold))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append("(API and RUNNER: ready/desired replicas)")
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
