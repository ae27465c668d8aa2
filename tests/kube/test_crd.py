"""The TiffinDeployment CRD: a valid, structural CustomResourceDefinition whose spec schema is the deployment YAML's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate
from pydantic import ValidationError

from tests.kube.schemas import crd_validator, errors
from tests.kube.test_render import EXAMPLES, K8S_VERSIONS
from tests.procs import ROOT
from tiffin.contracts.config import Deployment
from tiffin.kube import crd

COMMITTED = ROOT / "deploy" / "base" / "crds" / crd.FILE_NAME


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path."""
    yield path or "(root)", schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}.*")
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")


def spec_of(example: Path) -> dict[str, Any]:
    data = yaml.safe_load(example.read_text())
    data.pop("name")
    return data


def resource(spec: dict[str, Any], name: str = "llm") -> dict[str, Any]:
    return {"apiVersion": f"{crd.GROUP}/{crd.VERSION}", "kind": crd.KIND, "metadata": {"name": name}, "spec": spec}


def test_committed_crd_is_a_fresh_generation() -> None:
    """If this fails, run `tiffin render --crd -o deploy/base/crds/` and commit the file."""
    assert COMMITTED.read_text() == crd.crd_yaml()


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_crd_validates_as_a_custom_resource_definition(version: str) -> None:
    kubernetes_validate.validate(yaml.safe_load(COMMITTED.read_text()), version, strict=True)


def test_names_scope_status_and_columns() -> None:
    obj = crd.crd()
    spec = obj["spec"]
    assert obj["metadata"]["name"] == "tiffindeployments.tiffin.io"
    assert (spec["group"], spec["scope"]) == ("tiffin.io", "Namespaced")
    assert spec["names"]["kind"] == "TiffinDeployment"
    assert spec["names"]["plural"] == "tiffindeployments"
    assert spec["names"]["shortNames"] == ["tdep"]
    [version] = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Model", "GPUs", "Ready", "Reason", "Age"]


def test_schema_is_structural() -> None:
    """What the API server demands of a CRD schema (it refuses the CRD otherwise)."""
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    free_form = []
    for path, node in nodes(schema):
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "default", "title"} & node.keys(), path
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
        else:
            assert node.get("type") in ("object", "array", "string", "integer", "number", "boolean"), path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties") is not False, path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            free_form.append(path)
    # Unknown fields survive only where the YAML itself takes anything: vLLM's engine arguments (and status).
    assert free_form == [".spec.runner.engine_args", ".status"]


def test_spec_has_every_deployment_field_but_name() -> None:
    schema = crd.spec_schema()
    fields = set(Deployment.model_fields) - {"name"}
    assert set(schema["properties"]) == fields
    assert schema["required"] == ["model"]
    kube = schema["properties"]["kubernetes"]["properties"]
    tolerations = kube["runner"]["properties"]["tolerations"]["items"]["properties"]
    assert "tolerationSeconds" in tolerations  # Kubernetes' own spelling, as the YAML takes it


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid_resources(example: Path) -> None:
    """Each example file, indented under `spec:`, is a TiffinDeployment the API server accepts unchanged (strict
    field validation: no field of it would be dropped), and it still means the same deployment."""
    spec = spec_of(example)

    assert errors(crd_validator(crd.crd(), strict=True), resource(spec)) == []
    assert Deployment.model_validate({"name": "llm", **spec}).kubernetes is not None


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"api": {"concurrency": 0}}, "spec.api.concurrency"),
        ({"runner": {"gpus": "two"}}, "spec.runner.gpus"),
        ({"runner": {"startup_timeout_s": 0}}, "spec.runner.startup_timeout_s"),
        ({"kubernetes": {"model_cache": {"access_mode": "ReadOnlyMany"}}}, "spec.kubernetes.model_cache.access_mode"),
        ({"routing": {"hostz": []}}, "spec.routing"),
        ({"runner": {"env": {"A": 1}}}, "spec.runner.env.A"),
    ],
)
def test_schema_refuses_what_the_yaml_refuses(change: dict[str, Any], where: str) -> None:
    spec = {"model": "smollm2", **change}
    with pytest.raises(ValidationError):  # the YAML refuses it too
        Deployment.model_validate({"name": "llm", **spec})

    problems = errors(crd_validator(crd.crd(), strict=True), resource(spec))

    assert any(p.startswith(where) for p in problems), problems


def test_optional_fields_take_null_and_quantities_take_numbers_or_strings() -> None:
    spec = {
        "model": "smollm2",
        "served_model_name": None,
        "runner": {"gpu_type": None, "engine_args": {"anything": [1, "two"]}},
        "kubernetes": {"runner": {"resources": {"requests": {"cpu": 2, "memory": "4Gi"}, "limits": {"cpu": None}}}},
    }
    assert errors(crd_validator(crd.crd(), strict=True), resource(spec)) == []
    dep = Deployment.model_validate({"name": "llm", **spec})
    assert dep.kubernetes.runner.resources.requests.cpu == "2"
