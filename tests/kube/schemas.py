"""Kubernetes' structural schemas (a CRD's openAPIV3Schema) as JSON schemas `jsonschema` can check against.

OpenAPI v3.0 as Kubernetes reads it differs from JSON schema in a few words: `nullable`, boolean
`exclusiveMinimum` (draft 4 has it), `x-kubernetes-int-or-string`. With `strict`, objects refuse fields they do
not list, as the API server's strict field validation (kubectl's default) does, instead of pruning them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.procs import ROOT

Schema = dict[str, Any]

VENDORED_KEDA_CRD = ROOT / "tests" / "reference" / "keda" / "keda.sh_scaledobjects.yaml"
_SHARED_RELATIVE = Path("shared", "reference", "keda", "keda.sh_scaledobjects.yaml")
# KEDA's file from the team's shared folder: named by KEDA_CRD, or beside this checkout or a folder above it.
SHARED_KEDA_CRD = next(
    (p for p in [Path(os.environ.get("KEDA_CRD", "/nonexistent")), *(a / _SHARED_RELATIVE for a in ROOT.parents)]
     if p.is_file()),
    ROOT.parent / _SHARED_RELATIVE,
)  # fmt: skip


def to_json_schema(node: Schema, strict: bool = False) -> Schema:
    """One structural schema node (and everything under it) as a draft-4 JSON schema."""
    out = {key: value for key, value in node.items() if not key.startswith("x-kubernetes-") and key != "nullable"}
    nullable = bool(node.get("nullable"))
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}, *([{"type": "null"}] if nullable else [])]
    elif nullable and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if "properties" in node:
        out["properties"] = {k: to_json_schema(v, strict) for k, v in node["properties"].items()}
        if strict and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"], strict)
    if "items" in node:
        out["items"] = to_json_schema(node["items"], strict)
    return out


def crd_validator(crd: Schema, strict: bool = False) -> jsonschema.Draft4Validator:
    """A validator for objects of the CRD's first version."""
    schema = to_json_schema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], strict)
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def keda_scaledobject_validator() -> jsonschema.Draft4Validator:
    """KEDA's own ScaledObject schema (the vendored copy of its CRD)."""
    return crd_validator(yaml.safe_load(VENDORED_KEDA_CRD.read_text()))


def errors(validator: jsonschema.Draft4Validator, obj: Any) -> list[str]:
    """Every problem, as `path: message`, so a failing assert shows them all."""
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(obj)]
