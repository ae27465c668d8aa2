"""CPU time per process of a process tree, read from /proc: what each tiffin component costs per request."""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")

# First match wins: a command line containing the key is that component.
COMPONENTS = (
    ("-m interceptor", "interceptor"),
    ("-m proxy", "proxy"),
    ("runtime.api", "api server"),
    ("runtime.runner", "runner supervisor"),
    ("fastupstream", "upstream (engine)"),
    ("redis-server", "redis"),
    ("-m scaler", "scaler"),
    ("tiffin up", "tiffin up"),
    ("-m tiffin", "tiffin up"),
)


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of user + system) of a live process, or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def descendants(root: int) -> list[int]:
    """`root` and every process below it."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            parents[int(entry.name)] = stat[0]
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def component_of(pid: int) -> str:
    """A process's component name from its command line."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    return next((name for key, name in COMPONENTS if key in cmdline), cmdline[:40] or "?")


def cpu_by_component(root: int) -> dict[str, float]:
    """CPU seconds used so far by each component under `root` (several processes of one kind add up)."""
    totals: dict[str, float] = {}
    for pid in descendants(root):
        if stat := _stat(pid):
            name = component_of(pid)
            totals[name] = totals.get(name, 0.0) + stat[1]
    return totals
