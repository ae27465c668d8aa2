"""The ScaledObject schema the tests check against is KEDA's file, unchanged."""

from __future__ import annotations

import pytest
import yaml

from tests.kube.schemas import SHARED_KEDA_CRD, VENDORED_KEDA_CRD


def test_vendored_scaledobject_crd_is_byte_identical_to_kedas() -> None:
    if not SHARED_KEDA_CRD.is_file():
        pytest.skip(f"KEDA's CRD is not beside this checkout or above it, and KEDA_CRD is unset ({SHARED_KEDA_CRD})")
    assert VENDORED_KEDA_CRD.read_bytes() == SHARED_KEDA_CRD.read_bytes()


def test_vendored_file_is_the_scaledobject_crd() -> None:
    crd = yaml.safe_load(VENDORED_KEDA_CRD.read_text())
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "scaledobjects.keda.sh"
    assert [v["name"] for v in crd["spec"]["versions"]] == ["v1alpha1"]
