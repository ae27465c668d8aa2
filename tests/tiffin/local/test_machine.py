"""Checks against this machine: the GPU sleeping tier refused without a GPU, load formats against the installed vLLM.

`tiffin check` runs as a real process (the user's path); the checks' functions are also called directly with a
stand-in for the GPU question where the answer must be forced (this machine has no GPU).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.runner.engine import effective_engine_args, engine_env
from tiffin.common.gpu import sleep_mode_supported
from tiffin.contracts.config import load_deployments
from tiffin.local.machine import machine_problems, vllm_load_formats


def write(tmp_path: Path, name: str, **fields: object) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "model": "smollm2", **fields}))  # JSON is YAML
    return path


def tiffin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tiffin", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(sleep_mode_supported(), reason="this machine has a GPU: sleep mode is allowed here")
def test_tiffin_check_refuses_the_sleeping_tier_without_a_gpu_naming_file_and_field(tmp_path: Path) -> None:
    config = write(tmp_path, "sleepy", scaling={"idle_period_s": 60, "sleep_period_s": 600})
    done = tiffin("check", str(config))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{config}: scaling.sleep_period_s: vLLM's sleep mode needs a GPU" in done.stderr
    assert "nothing was started" in done.stderr


def test_the_sleeping_tier_is_allowed_where_sleep_mode_runs(tmp_path: Path) -> None:
    config = write(tmp_path, "sleepy", scaling={"sleep_period_s": 600})
    assert machine_problems([config], sleep_ok=lambda: True) == []
    assert machine_problems([config], sleep_ok=lambda: False) != []
    assert machine_problems([write(tmp_path, "awake")], sleep_ok=lambda: False) == []  # not asked for: no problem


def test_a_sleeping_deployment_starts_vllm_with_sleep_mode_and_its_endpoints(tmp_path: Path) -> None:
    [dep] = load_deployments([write(tmp_path, "sleepy", scaling={"sleep_period_s": 600})])
    assert effective_engine_args(dep, gpu=True)["enable_sleep_mode"] is True
    assert engine_env(dep, True, {})["VLLM_SERVER_DEV_MODE"] == "1"
    [plain] = load_deployments([write(tmp_path, "plain")])
    assert "enable_sleep_mode" not in effective_engine_args(plain, gpu=True)
    assert "VLLM_SERVER_DEV_MODE" not in engine_env(plain, True, {})


def test_sleep_period_must_be_positive(tmp_path: Path) -> None:
    done = tiffin("check", str(write(tmp_path, "zero", scaling={"sleep_period_s": 0})))
    assert done.returncode == 2
    assert "scaling.sleep_period_s: Input should be greater than 0" in done.stderr


@pytest.mark.skipif(vllm_load_formats() is None, reason="vLLM is not installed here: load formats are not checked")
def test_load_formats_are_checked_against_the_installed_vllm(tmp_path: Path) -> None:
    known = vllm_load_formats()
    assert known is not None and {"auto", "safetensors", "runai_streamer", "fastsafetensors"} <= set(known)
    typo = write(tmp_path, "typo", runner={"engine_args": {"load_format": "safetensor"}})
    [problem] = machine_problems([typo], sleep_ok=lambda: False)
    assert problem.startswith(f"{typo}: runner.engine_args.load_format: 'safetensor' is not one the installed vLLM")
    fine = write(tmp_path, "fine", runner={"engine_args": {"load-format": "safetensors"}})
    assert machine_problems([fine], sleep_ok=lambda: False) == []


def test_a_load_format_whose_package_is_missing_is_refused_by_tiffin_check(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("runai_model_streamer") is not None:
        pytest.skip("runai-model-streamer is installed here")
    if vllm_load_formats() is None:
        pytest.skip("vLLM is not installed here: load formats are not checked")
    config = write(tmp_path, "stream", runner={"engine_args": {"load_format": "runai_streamer"}})
    done = tiffin("check", str(config))
    assert done.returncode == 2
    assert "load_format: 'runai_streamer' needs the runai-model-streamer package" in done.stderr
