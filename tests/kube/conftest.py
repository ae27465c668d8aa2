"""tests/kube reuse the scaler tests' KEDA client (generated from KEDA's own proto)."""

from __future__ import annotations

from tests.scaler.conftest import keda

__all__ = ["keda"]
