"""Helpers for the platform-manifest tests: render the Kustomize overlays, find the reference schemas."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("dev", "production")
CRD_PATH = Path("base/crds/tiffindeployments.tiffin.io.yaml")
# Marks the stand-in written (in a temporary copy only) while `tiffin render --crd` has not committed the CRD.
PLACEHOLDER = "tiffin.io/placeholder"
KUBECTL = shutil.which("kubectl")
KEDA_SCHEMA_NAME = "keda.sh_scaledobjects.yaml"


def reference(relative: str) -> Path | None:
    """A file of the shared reference folder (`shared/reference/...`) beside or above this checkout, if any."""
    for folder in ROOT.parents:
        candidate = folder / "shared" / "reference" / relative
        if candidate.is_file():
            return candidate
    return None


def keda_crd() -> Path:
    """KEDA's ScaledObject CRD: the repository's copy (tests/reference/keda/), else the shared reference."""
    vendored = ROOT / "tests" / "reference" / "keda" / KEDA_SCHEMA_NAME
    if vendored.is_file():
        return vendored
    shared = reference(f"keda/{KEDA_SCHEMA_NAME}")
    if shared is None:
        pytest.skip(f"KEDA's CRD is neither at {vendored} nor in a shared/reference/keda/ folder above the checkout")
    return shared


def kustomize(target: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize TARGET`, parsed; the test is skipped (with the reason) without kubectl."""
    if KUBECTL is None:
        pytest.skip("kubectl is not on PATH: it renders the Kustomize overlays (`kubectl kustomize`)")
    done = subprocess.run([KUBECTL, "kustomize", str(target)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {target} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def deploy_tree(tmp: Path) -> Path:
    """A copy of deploy/ to render; holds a marked stand-in CRD only while the real one is not committed."""
    copy = tmp / "deploy"
    shutil.copytree(DEPLOY, copy)
    crd = copy / CRD_PATH
    if not crd.exists():
        crd.parent.mkdir(parents=True, exist_ok=True)
        crd.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "apiextensions.k8s.io/v1",
                    "kind": "CustomResourceDefinition",
                    "metadata": {"name": "tiffindeployments.tiffin.io", "annotations": {PLACEHOLDER: "true"}},
                    "spec": {
                        "group": "tiffin.io",
                        "scope": "Namespaced",
                        "names": {"kind": "TiffinDeployment", "plural": "tiffindeployments"},
                        "versions": [],
                    },
                }
            )
        )
    return copy


def is_placeholder(obj: dict[str, Any]) -> bool:
    return PLACEHOLDER in (obj.get("metadata", {}).get("annotations") or {})


def pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod template of a workload object (Deployment, StatefulSet, ...), if it has one."""
    template = obj.get("spec", {}).get("template", {})
    if obj.get("kind") in {"Deployment", "StatefulSet", "DaemonSet", "Job"} and "spec" in template:
        yield template["spec"]


def name_of(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
