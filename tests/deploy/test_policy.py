"""The static policy check: checkov on the rendered overlays and the Dockerfiles finds nothing beyond the
waivers in deploy/checkov-waivers.yaml, and every waiver there is still needed and says why."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import DEPLOY, OVERLAYS, ROOT, deploy_tree, is_placeholder, kustomize

WAIVERS = DEPLOY / "checkov-waivers.yaml"
SCRIPT = ROOT / "scripts" / "checkov.sh"


@pytest.fixture(scope="module")
def checkov() -> str:
    """checkov from its own venv (.tools/checkov), installed on first use by scripts/checkov.sh."""
    done = subprocess.run(["bash", str(SCRIPT), "--path-only"], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.skip(f"checkov could not be installed into .tools/checkov:\n{done.stderr[-2000:]}")
    return done.stdout.strip()


@pytest.fixture(scope="module")
def waivers() -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = yaml.safe_load(WAIVERS.read_text())["waivers"]
    return data


def run_checkov(checkov: str, folder: Path, framework: str) -> list[tuple[str, str]]:
    """(check id, resource) of every failed check."""
    done = subprocess.run(
        [checkov, "-d", str(folder), "--framework", framework, "-o", "json", "--quiet", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode in (0, 1), done.stderr[-2000:]
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    assert reports and all(r["summary"]["parsing_errors"] == 0 for r in reports), done.stdout[-2000:]
    assert sum(r["summary"]["passed"] for r in reports) > 0, "checkov checked nothing"
    return [(f["check_id"], f["resource"]) for r in reports for f in r["results"]["failed_checks"]]


def unwaived(failed: list[tuple[str, str]], waivers: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (check, resource)
        for check, resource in failed
        if check not in waivers or resource not in waivers[check].get("resources", [resource])
    ]


@pytest.fixture(scope="module")
def manifest_findings(checkov: str, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    tree = deploy_tree(tmp_path_factory.mktemp("deploy"))
    out = tmp_path_factory.mktemp("rendered")
    for overlay in OVERLAYS:
        objs = [o for o in kustomize(tree / "overlays" / overlay) if not is_placeholder(o)]
        (out / f"{overlay}.yaml").write_text(yaml.safe_dump_all(objs))
    return run_checkov(checkov, out, "kubernetes")


def test_every_waiver_says_why(waivers: dict[str, dict[str, Any]]) -> None:
    assert waivers
    for check, waiver in waivers.items():
        assert check.startswith("CKV"), check
        assert len(waiver["why"].split()) >= 12, f"{check}: say why it is waived"
        assert waiver["title"]


def test_the_manifests_pass_checkov_but_for_the_waivers(
    manifest_findings: list[tuple[str, str]], waivers: dict[str, dict[str, Any]]
) -> None:
    assert not unwaived(manifest_findings, waivers), "checkov findings without a waiver"


def test_the_dockerfiles_pass_checkov(checkov: str, waivers: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    for dockerfile in ROOT.glob("Dockerfile*"):
        shutil.copy(dockerfile, tmp_path / dockerfile.name)
    assert not unwaived(run_checkov(checkov, tmp_path, "dockerfile"), waivers)


def test_no_waiver_is_stale(manifest_findings: list[tuple[str, str]], waivers: dict[str, dict[str, Any]]) -> None:
    found = {check for check, _ in manifest_findings}
    assert not set(waivers) - found, "waivers that match no finding any more: remove them"


def test_checkov_does_report_a_bad_pod(checkov: str, tmp_path: Path) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bad", "namespace": "tiffin"},
        "spec": {"containers": [{"name": "c", "image": "x:1", "securityContext": {"privileged": True}}]},
    }
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    assert ("CKV_K8S_16", "Pod.tiffin.bad") in run_checkov(checkov, tmp_path, "kubernetes")
