"""deploy/examples/: each TiffinDeployment is its examples/ file in the CRD's shape, and fits the CRD's schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.deploy.manifests import CRD_PATH, DEPLOY, ROOT
from tiffin.contracts.config import load_deployments, parse_deployment

EXAMPLES = sorted((DEPLOY / "examples").glob("tiffindeployment-*.yaml"))


def test_there_is_an_example() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_resource_is_the_deployment_file(path: Path) -> None:
    resource = yaml.safe_load(path.read_text())
    assert resource["apiVersion"] == "tiffin.io/v1alpha1" and resource["kind"] == "TiffinDeployment"
    name = resource["metadata"]["name"]
    (source,) = load_deployments([ROOT / "examples" / f"{name}.yaml"])
    assert parse_deployment({"name": name, **resource["spec"]}, path) == source


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_resource_fits_the_crds_schema(path: Path) -> None:
    crd_file = DEPLOY / CRD_PATH
    if not crd_file.exists():
        pytest.skip(f"{crd_file} is not committed yet (`tiffin render --crd`)")
    # The CRD's schema as the API server reads it (OpenAPI 3.0 words, strict field validation): the helper
    # that lands with the CRD itself.
    schemas = pytest.importorskip("tests.kube.schemas")
    crd = yaml.safe_load(crd_file.read_text())
    resource = yaml.safe_load(path.read_text())
    assert resource["apiVersion"] == f"{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}"
    problems = [error.message for error in schemas.crd_validator(crd, strict=True).iter_errors(resource)]
    assert not problems
