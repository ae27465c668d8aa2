"""The wire contract: tiffin's copy of KEDA's proto is KEDA's file, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scaler.conftest import KEDA_PROTO, VENDORED_PROTO, Keda


def test_vendored_proto_is_byte_identical_to_kedas() -> None:
    if not KEDA_PROTO.is_file():
        pytest.skip(f"KEDA's proto is not beside this checkout or above it, and KEDA_PROTO is unset ({KEDA_PROTO})")
    assert VENDORED_PROTO.read_bytes() == KEDA_PROTO.read_bytes()


def test_the_test_client_is_generated_from_kedas_file_not_imported_from_tiffin(keda: Keda) -> None:
    assert keda.pb.__file__ is not None
    assert "tiffin" not in Path(keda.pb.__file__).parts
    service = keda.pb.DESCRIPTOR.services_by_name["ExternalScaler"]
    assert service.full_name == "externalscaler.ExternalScaler"
    assert {m.name for m in service.methods} >= {"IsActive", "StreamIsActive", "GetMetricSpec", "GetMetrics"}
