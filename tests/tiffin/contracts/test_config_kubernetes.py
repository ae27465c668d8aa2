"""The YAML's `kubernetes:` block: optional, so old files load; every bad value names the file, field and problem."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tiffin.contracts.config import load_deployments
from tiffin.contracts.config_kubernetes import quantity_value
from tiffin.contracts.exceptions import ConfigError


def write(folder: Path, text: str) -> Path:
    path = folder / "llm.yaml"
    path.write_text("name: llm\nmodel: smollm2\n" + textwrap.dedent(text))
    return path


def only_problem(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_deployments([path])
    [problem] = caught.value.problems
    return problem


def test_files_without_the_block_load_with_its_defaults(tmp_path: Path) -> None:
    [dep] = load_deployments([write(tmp_path, "")])

    k8s = dep.kubernetes
    assert k8s.api.image is None and k8s.runner.image is None
    assert k8s.api.resources.requests.cpu is None  # tiffin's default, filled in by render
    assert k8s.runner.node_selector == {} and k8s.runner.tolerations == []
    assert (k8s.model_cache.claim, k8s.model_cache.size, k8s.model_cache.access_mode) == (None, "20Gi", "ReadWriteOnce")


def test_a_full_block_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        kubernetes:
          api:
            image: registry.example/tiffin/platform:1
            resources: {requests: {cpu: 1, memory: 1Gi}, limits: {cpu: 2.5, memory: 2Gi}}
            proxy_resources: {limits: {memory: 256Mi}}
          runner:
            node_selector: {cloud.google.com/gke-nodepool: gpu-pool}
            tolerations:
              - {key: dedicated, operator: Equal, value: llm, effect: NoExecute, tolerationSeconds: 60}
              - {operator: Exists}
            shm_size: 8Gi
          model_cache: {claim: shared-models}
        """,
    )

    [dep] = load_deployments([path])

    k8s = dep.kubernetes
    assert k8s.api.resources.requests.cpu == "1"  # numbers become quantities
    assert k8s.api.resources.limits.cpu == "2.5"
    assert k8s.api.proxy_resources.limits.memory == "256Mi"
    assert k8s.runner.tolerations[0].toleration_seconds == 60
    assert k8s.runner.tolerations[1].key is None
    assert k8s.model_cache.claim == "shared-models"


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ("kubernetes:\n  runner:\n    resources: {requests: {memory: 4GB}}\n",
         "kubernetes.runner.resources.requests.memory: '4GB' is not a Kubernetes quantity (such as 500m, 2 or 4Gi)"),
        ("kubernetes:\n  api:\n    resources: {requests: {cpu: 2}, limits: {cpu: 500m}}\n",
         "kubernetes.api.resources: requests.cpu (2) is above limits.cpu (500m)"),
        ("kubernetes:\n  runner:\n    tolerations: [{value: x}]\n",
         "kubernetes.runner.tolerations[0]: a toleration without a key needs operator: Exists"),
        ("kubernetes:\n  runner:\n    tolerations: [{key: a, operator: Exists, value: x}]\n",
         "kubernetes.runner.tolerations[0]: operator Exists takes no value"),
        ("kubernetes:\n  runner:\n    tolerations: [{key: a, effect: NoRun}]\n",
         "kubernetes.runner.tolerations[0].effect: Input should be 'NoSchedule', 'PreferNoSchedule' or 'NoExecute'"),
        ("kubernetes:\n  runner:\n    node_selector: {'bad key!': x}\n",
         "kubernetes.runner.node_selector: 'bad key!' is not a valid label key"),
        ("kubernetes:\n  api:\n    node_selector: {pool: 'has space'}\n",
         "kubernetes.api.node_selector: 'has space' (for pool) is not a valid label value"),
        ("kubernetes:\n  model_cache: {claim: My_Claim}\n",
         "kubernetes.model_cache.claim: 'My_Claim' is not a Kubernetes object name"),
        ("kubernetes:\n  model_cache: {access_mode: ReadOnlyMany}\n",
         "kubernetes.model_cache.access_mode: Input should be 'ReadWriteOnce', 'ReadWriteOncePod' or 'ReadWriteMany'"),
        ("kubernetes:\n  runner:\n    image: 'a b'\n",
         "kubernetes.runner.image: must be an image reference without spaces"),
        ("kubernetes:\n  runner:\n    gpus: 1\n", "kubernetes.runner.gpus: unknown field (check the spelling)"),
    ],
)  # fmt: skip
def test_bad_values_name_file_field_and_problem(tmp_path: Path, block: str, problem: str) -> None:
    path = write(tmp_path, block)
    assert only_problem(path).startswith(f"{path}: {problem}")


def test_model_folders_are_checked_unless_told_they_live_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "llm.yaml"
    path.write_text("name: llm\nmodel: /models/llama\n")

    assert "model: folder /models/llama does not exist" in only_problem(path)
    [dep] = load_deployments([path], check_models=False)
    assert dep.model == "/models/llama"
    monkeypatch.setenv("TIFFIN_CHECK_MODEL_FOLDERS", "0")  # what render gives the API server and the proxy
    assert load_deployments([path]) == [dep]


@pytest.mark.parametrize(
    ("quantity", "value"), [("500m", 0.5), ("2", 2), ("1.5", 1.5), ("4Gi", 4 * 2**30), ("1G", 1e9), ("2E", 2e18)]
)
def test_quantities_compare_by_value(quantity: str, value: float) -> None:
    assert quantity_value(quantity) == pytest.approx(value)
