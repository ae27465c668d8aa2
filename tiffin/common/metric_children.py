"""Labelled metric children kept once looked up, for metrics updated on every request."""

from __future__ import annotations

from typing import Any


class Children:
    """`metric.labels(*labels)`, kept: a per-request lookup skips prometheus_client's validation and lock each time
    (nothing here ever removes a child, so a kept one stays the registered one)."""

    def __init__(self) -> None:
        self._kept: dict[tuple[Any, ...], Any] = {}

    def __call__(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        try:
            return self._kept[key]
        except KeyError:
            found = self._kept[key] = metric.labels(*labels)
            return found
