"""Typed reads of prefixed environment variables, for each component's `config.py`."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"environment variable {name}={raw!r} must be a whole number") from exc


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SystemExit(f"environment variable {name}={raw!r} must be a number") from exc


def env_positive(name: str, default: float) -> float:
    """A number above zero (a period or a time-to-live)."""
    value = env_float(name, default)
    if value <= 0:
        raise SystemExit(f"environment variable {name}={value:g} must be above 0")
    return value


def env_bool(name: str, default: bool = False) -> bool:
    """A switch: 1/true/yes/on or 0/false/no/off (empty or unset: `default`)."""
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"environment variable {name}={raw!r} must be 1 or 0 (true/false, yes/no, on/off)")


def env_paths(name: str) -> list[Path]:
    """A `:`-separated list of paths (like PATH)."""
    raw = os.environ.get(name, "")
    return [Path(p) for p in raw.split(os.pathsep) if p]


def redis_url() -> str:
    """`REDIS_URL` points every part of tiffin at one Redis."""
    return os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
