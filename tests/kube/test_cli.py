"""`tiffin render` as a user runs it: a real process writing files or a YAML stream, and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from tests.kube.test_crd import COMMITTED
from tests.kube.test_render import EXAMPLES
from tests.procs import ROOT


def tiffin(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "tiffin", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_output_folder_gets_one_file_per_object_in_apply_order(tmp_path: Path) -> None:
    done = tiffin("render", *EXAMPLES, "-o", tmp_path / "out")

    assert done.returncode == 0, done.stderr
    files = sorted((tmp_path / "out").iterdir())
    objects = [yaml.safe_load(f.read_text()) for f in files]
    assert [f.name for f in files][:2] == ["01-configmap-qwen-config.yaml", "01-configmap-smollm2-config.yaml"]
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} >= {
        ("ScaledObject", "smollm2-api"),
        ("ScaledObject", "qwen-runner"),
        ("Deployment", "qwen-runner"),
    }
    for f in files:
        assert f"wrote {f}" in done.stderr  # says what it wrote
    # Apply order holds across files sorted by name: no ScaledObject before the Deployment it scales.
    kinds = [o["kind"] for o in objects]
    assert max(i for i, k in enumerate(kinds) if k == "Deployment") < min(
        i for i, k in enumerate(kinds) if k == "ScaledObject"
    )


def test_without_output_one_yaml_stream_goes_to_stdout() -> None:
    done = tiffin("render", EXAMPLES[0], "--namespace", "llms", "--image", "registry.example/tiffin:1")

    assert done.returncode == 0, done.stderr
    objects = list(yaml.safe_load_all(done.stdout))
    assert [o["kind"] for o in objects] == [
        "ConfigMap", "PersistentVolumeClaim", "Service", "Service", "NetworkPolicy", "NetworkPolicy", "Deployment",
        "Deployment", "ScaledObject", "ScaledObject",
    ]  # fmt: skip
    assert {o["metadata"]["namespace"] for o in objects} == {"llms"}
    api = objects[6]["spec"]["template"]["spec"]["containers"]
    assert {c["image"] for c in api} == {"registry.example/tiffin:1"}
    # The file goes into the ConfigMap as written, comments and all (block style, readable in kubectl).
    assert objects[0]["data"]["deployment.yaml"] == EXAMPLES[0].read_text()
    assert "deployment.yaml: |" in done.stdout


def test_bad_yaml_gets_the_same_errors_as_tiffin_check(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Bad_Name\nmodel: smollm2\napi:\n  concurency: 3\n")

    done = tiffin("render", bad, "-o", tmp_path / "out")
    check = tiffin("check", bad)

    assert done.returncode == 2
    assert f"{bad}: name: must be 1-63 lowercase letters" in done.stderr
    assert f"{bad}: api.concurency: unknown field (check the spelling)" in done.stderr
    assert check.returncode == 2
    for line in check.stderr.splitlines()[1:]:
        assert line in done.stderr
    assert not (tmp_path / "out").exists()


def test_what_cannot_run_on_a_cluster_is_refused_naming_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "local.yaml"
    path.write_text(
        textwrap.dedent("""\
        name: local
        model: ./my-model
        runner:
          gpu_type: nvidia-l4
        """)
    )

    done = tiffin("render", path)

    assert done.returncode == 2
    assert done.stdout == ""
    assert f"{path}: model: './my-model' is a relative folder" in done.stderr
    assert f"{path}: runner.gpu_type: set while runner.gpus is 0" in done.stderr


def test_model_folders_are_not_looked_for_on_this_machine(tmp_path: Path) -> None:
    """`qwen-gpu.yaml` names /models/..., which exists on the cluster's volume only."""
    assert not Path(yaml.safe_load(EXAMPLES[1].read_text())["model"]).exists()
    assert tiffin("check", EXAMPLES[1]).returncode == 2
    assert tiffin("render", EXAMPLES[1]).returncode == 0


def test_a_shared_model_cache_that_pins_runners_to_one_node_is_noted(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text("name: two\nmodel: smollm2\nrunner:\n  max_replicas: 2\n")

    done = tiffin("render", path)

    assert done.returncode == 0
    assert "note:" in done.stderr and "ReadWriteMany" in done.stderr


def test_crd_command_writes_the_committed_file(tmp_path: Path) -> None:
    done = tiffin("render", "--crd", "-o", tmp_path)

    assert done.returncode == 0, done.stderr
    assert (tmp_path / COMMITTED.name).read_text() == COMMITTED.read_text()
    assert tiffin("render", "--crd").stdout == COMMITTED.read_text()


def test_render_without_files_says_what_it_needs() -> None:
    done = tiffin("render")

    assert done.returncode == 2
    assert "name deployment files to render (or --crd)" in done.stderr
