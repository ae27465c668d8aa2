"""The engine's command line and environment, built from a deployment; GPU detection from `nvidia-smi -L`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from runtime.config import ApiSettings, RunnerSettings, local_url
from runtime.runner.engine import engine_args_to_cli, engine_command, engine_env, has_gpu
from tiffin.contracts.config import Deployment

MODEL = Path("/models/smol")


def deployment(**runner: Any) -> Deployment:
    return Deployment.model_validate({"name": "smol", "model": "smollm2", "runner": runner})


def test_vllm_command_on_a_gpu_machine_passes_engine_args_as_flags() -> None:
    dep = deployment(engine_args={"max_model_len": 2048, "trust-remote-code": True, "enable_prefix_caching": False})
    assert engine_command(dep, MODEL, "0.0.0.0", 8123, gpu=True) == [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/models/smol", "--served-model-name", "smol", "--host", "0.0.0.0", "--port", "8123",
        "--max-model-len", "2048", "--trust-remote-code",
    ]  # fmt: skip


def test_cpu_defaults_are_added_without_a_gpu() -> None:
    cmd = engine_command(deployment(), MODEL, "127.0.0.1", 8100, gpu=False)
    assert cmd[cmd.index("--dtype") + 1] == "float32"
    assert "--enforce-eager" in cmd


@pytest.mark.parametrize(
    ("args", "expected_tail"),
    [
        ({"dtype": "bfloat16"}, ["--dtype", "bfloat16", "--enforce-eager"]),
        ({"enforce-eager": False}, ["--dtype", "float32"]),  # the user's explicit false wins: no flag
        ({"enforce_eager": True, "dtype": "float16"}, ["--enforce-eager", "--dtype", "float16"]),
    ],
)
def test_cpu_defaults_never_override_the_users_choice(args: dict[str, Any], expected_tail: list[str]) -> None:
    cmd = engine_command(deployment(engine_args=args), MODEL, "127.0.0.1", 8100, gpu=False)
    assert cmd[cmd.index("8100") + 1 :] == expected_tail


def test_list_values_follow_one_flag_and_empty_lists_are_omitted() -> None:
    cli = engine_args_to_cli({"allowed_origins": ["a", "b"], "middleware": [], "gpu_memory_utilization": 0.5})
    assert cli == ["--allowed-origins", "a", "b", "--gpu-memory-utilization", "0.5"]


def test_custom_command_is_filled_in_and_gets_no_vllm_flags() -> None:
    dep = deployment(
        command=["server", "--port={port}", "{model}", "--name", "{served_model_name}", '{"keep": "{braces}"}'],
        engine_args={"max_model_len": 512},
    )
    assert engine_command(dep, MODEL, "127.0.0.1", 9001, gpu=False) == [
        "server", "--port=9001", "/models/smol", "--name", "smol", '{"keep": "{braces}"}',
    ]  # fmt: skip


def test_env_layers_defaults_under_the_deployments_env() -> None:
    dep = deployment(env={"VLLM_CPU_KVCACHE_SPACE": "4", "EXTRA": "x"})
    base = {"PATH": "/bin", "HF_HUB_OFFLINE": "0"}
    env = engine_env(dep, gpu=False, base=base)
    assert env == {"PATH": "/bin", "HF_HUB_OFFLINE": "0", "VLLM_CPU_KVCACHE_SPACE": "4", "EXTRA": "x"}
    assert engine_env(deployment(), gpu=False, base={}) == {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    assert engine_env(deployment(), gpu=True, base={}) == {"HF_HUB_OFFLINE": "1"}
    assert base == {"PATH": "/bin", "HF_HUB_OFFLINE": "0"}  # the runner's own environment is left alone


def _fake_nvidia_smi(tmp_path: Path, output: str, code: int = 0) -> str:
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '{output}'\nexit {code}\n")
    script.chmod(0o755)
    return str(script)


def test_gpu_detection(tmp_path: Path) -> None:
    gpu_line = "GPU 0: NVIDIA A10G (UUID: GPU-1234)\\n"
    assert has_gpu(_fake_nvidia_smi(tmp_path, gpu_line)) is True
    assert has_gpu(_fake_nvidia_smi(tmp_path, "No devices were found\\n", code=6)) is False
    assert has_gpu(_fake_nvidia_smi(tmp_path, "")) is False
    assert has_gpu(str(tmp_path / "missing-nvidia-smi")) is False


def _write_deployment(tmp_path: Path) -> Path:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    path = tmp_path / "smol.yaml"
    path.write_text("name: smol\nmodel: model\n")
    return path


def test_settings_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIFFIN_CONFIG", str(_write_deployment(tmp_path)))
    monkeypatch.setenv("TIFFIN_DEPLOYMENT", "smol")
    monkeypatch.setenv("TIFFIN_RUNNER_HOST", "0.0.0.0")
    monkeypatch.setenv("TIFFIN_RUNNER_PORT", "8200")
    monkeypatch.delenv("TIFFIN_REPLICA_ID", raising=False)
    runner = RunnerSettings.from_env()
    assert (runner.deployment.name, runner.port, runner.heartbeat_ttl_s) == ("smol", 8200, 10.0)
    assert runner.url == runner.local_url == "http://127.0.0.1:8200"  # a wildcard address is reached on loopback
    api = ApiSettings.from_env()
    assert (api.host, api.port) == ("127.0.0.1", 8000)
    assert api.replica_id != runner.replica_id  # hostname-pid-random: unique per start
    assert local_url("::", 1) == "http://[::1]:1"


@pytest.mark.parametrize(("name", "message"), [("", "TIFFIN_DEPLOYMENT is not set"), ("other", "'other' is not in")])
def test_settings_name_a_missing_or_unknown_deployment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, message: str
) -> None:
    monkeypatch.setenv("TIFFIN_CONFIG", str(_write_deployment(tmp_path)))
    monkeypatch.setenv("TIFFIN_DEPLOYMENT", name)
    with pytest.raises(SystemExit, match=message):
        ApiSettings.from_env()
